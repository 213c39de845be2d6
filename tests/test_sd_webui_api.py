"""The Stable Diffusion web UI's interrogation API, served: the clip-interrogator extension's
``/interrogator/*`` routes and AUTOMATIC1111's ``/sdapi/v1/interrogate``, called with the
bodies their clients send, answer what ``/interrogate``, ``/caption`` and ``/analyze``
answer for the same image (whose parity with clip-interrogator 0.6.0
tests/test_served_interrogation.py checks), with errors that carry FastAPI's ``detail``
beside the project's ``error``.

On the session servers (the open_clip one maps the extension's default model name to its
model, ``CLIP_MODEL_ALIASES``; the CLIP-only one): no server of its own. That every route
needs a key when keys are set is checked on a served instance with keys by
tests/test_served_auth.py (all routes of the OpenAPI document, these included); here the
401 of these routes carries ``detail`` too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from clip_service.errors import NotFound
from clip_service.server.auth import ApiKeys
from clip_service.server.middleware import AccessControl, ResponseShaper
from clip_service.server.sd_webui import check_model_name, extension_name
from tests.conftest import b64, image_bytes, make_image

KEY = "webui-key"
# What many scripts send: the extension's default model; the session server maps it
# (tests/conftest.py, open_clip_env).
ALIAS = "ViT-L-14/openai"
NOT_SERVED = "ViT-H-14/laion2b_s32b_b79k"
JPEG = image_bytes(make_image(23, (120, 90)), "JPEG")
IMAGE = b64(JPEG)
ROUTES = ["/interrogator/prompt", "/interrogator/analyze", "/sdapi/v1/interrogate"]
MODELS = "/interrogator/models"


@pytest.fixture(scope="module")
def client(open_clip_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=open_clip_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def served_name(client, tiny_models) -> str:
    return f"local-dir:{tiny_models['open-clip']}"  # the spec as CLIP_MODEL gives it


def native_prompt(client: httpx.Client, mode: str) -> str:
    answer = client.post("/interrogate", json={"image": {"img_blob": IMAGE}, "mode": mode})
    assert answer.status_code == 200, answer.text
    return answer.json()["prompt"]


def refusal(response: httpx.Response, status: int) -> str:
    """The error message, which the body carries as ``error`` and as ``detail`` alike."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["detail"] == body["error"]
    return body["error"]


@pytest.mark.served
@pytest.mark.parametrize("mode", ["classic", "fast"])
def test_prompt_in_each_mode_is_the_interrogate_prompt(client, mode) -> None:
    # The body of an axios client (interrogateQuery, 'http://127.0.0.1:7860/interrogator/
    # prompt'), with the extension's default model name, mapped here by CLIP_MODEL_ALIASES.
    body = {"clip_model_name": ALIAS, "image": IMAGE, "mode": mode}
    answer = client.post("/interrogator/prompt", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"prompt": native_prompt(client, mode)}


@pytest.mark.served
def test_caption_mode_is_the_caption(client) -> None:
    # jbone3311/CLIP_analysis, src/analyzers/clip_analyzer.py: {"image", "model", "mode"},
    # modes best, fast, classic, negative, caption; "model" is no field of the extension's
    # (it is ignored there too, and the default model used).
    body = {"image": IMAGE, "model": "ViT-L-14", "mode": "caption"}
    answer = client.post("/interrogator/prompt", json=body)
    caption = client.post("/caption", json={"image": {"img_blob": IMAGE}}).json()["caption"]
    assert answer.status_code == 200 and answer.json() == {"prompt": caption}


@pytest.mark.served
def test_prompt_without_a_mode_or_model_is_fast_with_the_served_model(client) -> None:
    answer = client.post("/interrogator/prompt", json={"image": IMAGE})
    assert answer.json() == {"prompt": native_prompt(client, "fast")}


@pytest.mark.served
def test_analyze_answers_the_extensions_label_score_maps(client) -> None:
    # A node-fetch client: JSON.stringify({ image: `data:image/jpeg;base64,${imageBase64}` }).
    answer = client.post("/interrogator/analyze", json={"image": f"data:image/jpeg;base64,{IMAGE}"})
    assert answer.status_code == 200, answer.text
    native = client.post("/analyze", json={"image": {"img_blob": IMAGE}, "top_k": 5}).json()
    names = {"medium": "mediums", "artist": "artists", "movement": "movements"}
    names |= {"trending": "trendings", "flavor": "flavors"}
    expected = {
        key: {top["label"]: top["score"] for top in native[table]} for key, table in names.items()
    }
    assert answer.json() == expected
    assert all(len(scores) == 5 for scores in expected.values())
    # Best first, as the extension's dicts are made from its ranking.
    for key, table in names.items():
        assert list(answer.json()[key]) == [top["label"] for top in native[table]]


@pytest.mark.served
def test_models_lists_the_served_model_whose_name_is_accepted(client, served_name) -> None:
    assert client.get(MODELS).json() == [served_name]
    body = {"image": IMAGE, "clip_model_name": served_name, "mode": "classic"}
    answer = client.post("/interrogator/prompt", json=body)
    assert answer.json() == {"prompt": native_prompt(client, "classic")}


@pytest.mark.served
def test_a1111_clip_interrogation_is_classic_mode(client) -> None:
    # A1111 scripts: payload = {"image": ..., "model": "clip"}, posted as json=payload or
    # as data=json.dumps(payload) (no content type).
    expected = {"caption": native_prompt(client, "classic")}
    payload = {"image": IMAGE, "model": "clip"}
    untyped = client.post("/sdapi/v1/interrogate", content=json.dumps(payload))
    assert untyped.status_code == 200, untyped.text
    assert untyped.json() == expected
    # yar3333/aipainter, SdInterrogateRequest.cs: `string? model`, null when unset.
    for body in ({"image": IMAGE}, {"image": IMAGE, "model": None}):
        assert client.post("/sdapi/v1/interrogate", json=body).json() == expected


@pytest.mark.served
@pytest.mark.parametrize("model", ["deepdanbooru", "blip"])
def test_a1111_models_but_clip_are_a_404(client, model) -> None:
    # mith-mmk/PromptCreator, interrogate.py: --model "clip or deepdanbooru".
    answer = client.post("/sdapi/v1/interrogate", json={"image": IMAGE, "model": model})
    assert refusal(answer, 404).startswith(f"model: {model!r} is not served here")


@pytest.mark.served
@pytest.mark.parametrize("route", ["/interrogator/prompt", "/interrogator/analyze"])
def test_a_clip_model_not_served_nor_mapped_is_a_404_naming_the_served_one(
    client, route, served_name
) -> None:
    answer = client.post(route, json={"image": IMAGE, "clip_model_name": NOT_SERVED})
    message = refusal(answer, 404)
    assert message.startswith(f"clip_model_name: {NOT_SERVED!r} is not served here")
    assert repr(served_name) in message and "CLIP_MODEL_ALIASES" in message


@pytest.mark.served
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("image", "problem"),
    [
        ("not base64 at all!", "not valid base64"),
        ("", "required"),
        (b64(b"GIF89a but no image"), "not a readable image"),
        ("data:image/png;base64,@@@", "not valid base64"),
        ("http://127.0.0.1:9/cat.png", "refused"),  # never fetched: a private address
    ],
)
def test_a_bad_image_is_a_400_naming_the_image(client, route, image, problem) -> None:
    message = refusal(client.post(route, json={"image": image}), 400)
    assert message.startswith("image: ") and problem in message


@pytest.mark.served
def test_an_unknown_mode_is_a_400_naming_it(client) -> None:
    answer = client.post("/interrogator/prompt", json={"image": IMAGE, "mode": "fastest"})
    message = refusal(answer, 400)
    assert message.startswith("mode: ") and "'caption', 'classic', 'fast'" in message


def test_without_a_key_401_carries_detail_and_a_basic_password_is_a_key() -> None:
    """The entry's access control and answer shaping in process: A1111 run with
    ``--api-auth user:password`` is called with HTTP Basic auth, whose password is a key."""
    app = Starlette(routes=[*(Route(r, ok, methods=["POST"]) for r in ROUTES), Route(MODELS, ok)])
    keys = ApiKeys([KEY], public_metrics=False, public_docs=False)
    client = TestClient(ResponseShaper(AccessControl(app, origins=(), keys=keys, expose=())))
    for method, route in [*(("POST", route) for route in ROUTES), ("GET", MODELS)]:
        message = refusal(client.request(method, route), 401)
        assert message.startswith("authorization: an API key is required"), route
        wrong = client.request(method, route, auth=("user", "not-the-key"))
        assert refusal(wrong, 401) == "authorization: the API key is not valid"
        assert client.request(method, route, auth=("user", KEY)).text == "ok"


def ok(request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.mark.served
def test_clip_only_servers_refuse_as_interrogate_does(clip_only_server, tiny_models) -> None:
    url = clip_only_server.url
    native = httpx.post(f"{url}/interrogate", json={"image": {"img_blob": IMAGE}})
    assert native.status_code == 501
    for route in ROUTES:
        answer = httpx.post(f"{url}{route}", json={"image": IMAGE})
        assert refusal(answer, 501) == native.json()["error"]
    listed = httpx.get(f"{url}{MODELS}").json()
    assert listed == [f"local-dir:{tiny_models['open-clip']}"]


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("ViT-B-32:openai", "ViT-B-32/openai"),
        ("ViT-L-14/openai", "ViT-L-14/openai"),
        ("openai/clip-vit-base-patch32", "openai/clip-vit-base-patch32"),
        ("local-dir:/no/such/model", "local-dir:/no/such/model"),  # an encoder elsewhere
    ],
)
def test_served_models_are_named_as_the_extension_names_them(spec, name) -> None:
    assert extension_name(spec) == name


def test_model_names_accepted_are_the_served_ones_and_the_aliases() -> None:
    for name in (None, "", "ViT-B-32/openai", "ViT-B-32:openai", "ViT-L-14/openai"):
        check_model_name(name, "ViT-B-32:openai", ["ViT-L-14/openai"], "clip_model_name")
    with pytest.raises(NotFound, match="'ViT-B-32/openai'"):
        check_model_name("ViT-B-16/openai", "ViT-B-32:openai", ["ViT-L-14/openai"], "f")
