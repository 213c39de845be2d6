"""End to end against real `bentoml serve` subprocesses on 127.0.0.1 (tiny models)."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import httpx
import numpy as np
import open_clip
import pytest
import torch
from transformers import CLIPModel, CLIPProcessor

from tests.conftest import b64, image_bytes, make_image, metric_total

pytestmark = pytest.mark.served

TEXTS = ["a photo of a cat", "a diagram", "", "an oil painting of a harbour at dusk " * 12]
IMAGES = [make_image(seed, size) for seed, size in [(10, (320, 240)), (11, (64, 512))]]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(axis=-1)


def _encode(url: str, items: list[dict]) -> np.ndarray:
    response = httpx.post(f"{url}/encode", json=items, timeout=60)
    assert response.status_code == 200, response.text
    return np.array(response.json(), dtype=np.float32)


def _in_item_order(texts: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Reference vectors in the order :func:`_items` sends them."""
    return np.stack([texts[0], images[0], *texts[1:], images[1]])


def _items() -> list[dict]:
    texts = [{"text": t} for t in TEXTS if t]
    images = [{"img_blob": b64(image_bytes(image))} for image in IMAGES]
    return [texts[0], images[0], *texts[1:], images[1]]


@torch.inference_mode()
def test_encode_matches_open_clip(open_clip_url, tiny_models):
    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{tiny_models['open-clip']}"
    )
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_models['open-clip']}")
    model.eval()
    texts = [t for t in TEXTS if t]
    expected_text = model.encode_text(tokenizer(texts)).numpy()
    expected_image = model.encode_image(torch.stack([preprocess(i) for i in IMAGES])).numpy()
    served = _encode(open_clip_url, _items())
    expected = _in_item_order(expected_text, expected_image)
    assert served.shape == expected.shape
    assert _cosines(served, expected).min() >= 0.9999
    np.testing.assert_allclose(served, expected, rtol=1e-3, atol=1e-4)  # raw, not normalised


@torch.inference_mode()
def test_encode_matches_transformers(hf_url, tiny_models):
    path = str(tiny_models["hf-clip"])
    model, processor = CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)
    texts = [t for t in TEXTS if t]
    text_inputs = processor(text=texts, padding=True, truncation=True, return_tensors="pt")
    expected_text = model.get_text_features(**text_inputs).pooler_output.numpy()
    image_inputs = processor(images=IMAGES, return_tensors="pt")
    expected_image = model.get_image_features(**image_inputs).pooler_output.numpy()
    served = _encode(hf_url, _items())
    expected = _in_item_order(expected_text, expected_image)
    assert _cosines(served, expected).min() >= 0.9999
    np.testing.assert_allclose(served, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("server", ["open_clip_url", "hf_url"])
def test_rank_is_softmax_of_scaled_cosines(server, request):
    url = request.getfixturevalue(server)
    queries = [{"img_blob": b64(image_bytes(IMAGES[0]))}, {"text": "a harbour"}]
    candidates = [{"text": "a cat"}, {"text": "a dog"}, {"img_blob": b64(image_bytes(IMAGES[1]))}]
    response = httpx.post(f"{url}/rank", json={"queries": queries, "candidates": candidates})
    assert response.status_code == 200, response.text
    body = response.json()
    scale = httpx.get(f"{url}/model").json()["logit_scale"]
    q, c = _encode(url, queries), _encode(url, candidates)
    cosines = np.array([[_cosines(qi, ci) for ci in c] for qi in q])
    np.testing.assert_allclose(body["cosine_similarities"], cosines, atol=1e-5)
    expected = torch.tensor(scale * cosines, dtype=torch.float64).softmax(dim=1).numpy()
    np.testing.assert_allclose(body["probabilities"], expected, atol=1e-5)
    assert np.isclose(scale, 1 / 0.07)


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "image/png"])
def test_vectorize_takes_raw_bytes_with_any_content_type(open_clip_url, content_type):
    data = image_bytes(IMAGES[0])
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(f"{open_clip_url}/vectorize", content=data, headers=headers)
    assert response.status_code == 200, response.text
    vector = np.array(response.json()["vector"])
    expected = _encode(open_clip_url, [{"img_blob": b64(data)}])[0]
    np.testing.assert_allclose(vector, expected, atol=1e-6)


def test_model_info(open_clip_url, tiny_models):
    info = httpx.get(f"{open_clip_url}/model").json()
    assert info["spec"] == f"local-dir:{tiny_models['open-clip']}"
    assert info["backend"] == "open_clip"
    assert (info["embedding_size"], info["device"], info["dtype"]) == (32, "cpu", "float32")
    assert info["batching"]["image_max_batch_size"] >= 32


def test_bentoml_endpoints(open_clip_url):
    for path in ("/livez", "/readyz", "/metrics", "/", "/docs.json"):
        assert httpx.get(f"{open_clip_url}{path}").status_code == 200, path
    schema = httpx.get(f"{open_clip_url}/docs.json").json()
    assert {"/encode", "/rank", "/vectorize"} <= set(schema["paths"])


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/encode", b'[{"text": "a cat"', r"^body: invalid JSON"),
        ("/encode", b"[]", r"^body: List should have at least 1 item"),
        ("/encode", b'[{"txt": "a"}]', r"^body\[0\]\.txt: Extra inputs"),
        ("/encode", b'[{"text": "a", "img_blob": "eA=="}]', r"^body\[0\]: Value error, exactly"),
        ("/encode", b'[{"img_blob": "!!"}]', r"^items\[0\]\.img_blob: not valid base64"),
        ("/encode", b'[{"img_blob": "aGVsbG8="}]', r"^items\[0\]\.img_blob: not a readable"),
        ("/encode", b'[{"img_uri": "file:///etc/passwd"}]', r"^items\[0\]\.img_uri: only http"),
        ("/encode", b'{"text": "a"}', r"^body: Input should be a valid list"),
        ("/rank", b'{"queries": [{"text": "a"}]}', r"^candidates: Field required"),
        (
            "/rank",
            b'{"queries": [{"text": "a"}], "candidates": [{"img_blob": "eA"}]}',
            r"^candidates\[0\]\.img_blob: not valid base64",
        ),
        ("/vectorize", b"", r"^body: empty body"),
        ("/vectorize", b"garbage", r"^body: not a readable image"),
    ],
)
def test_bad_input_is_a_400_with_the_error_shape(open_clip_url, path, body, message):
    response = httpx.post(
        f"{open_clip_url}{path}", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert re.match(message, response.json()["error"]), response.json()


def _batch_histogram(url: str) -> tuple[float, float]:
    """(number of encode_images batches, batches of one image) from /metrics."""
    text = httpx.get(f"{url}/metrics").text
    name = "clip_service_batch_size"
    count = metric_total(text, f"{name}_count", method="encode_images")
    return count, metric_total(text, f"{name}_bucket", method="encode_images", le="1.0")


async def _burst(url: str, payloads: list[bytes]) -> list[np.ndarray]:
    async with aiohttp.ClientSession() as session:

        async def one(data: bytes) -> np.ndarray:
            async with session.post(f"{url}/vectorize", data=data) as response:
                assert response.status == 200, await response.text()
                return np.array((await response.json())["vector"])

        return await asyncio.gather(*(one(data) for data in payloads))


def test_burst_is_batched_and_vectors_do_not_depend_on_their_batch(open_clip_url):
    target = image_bytes(make_image(100))
    alone = np.array(httpx.post(f"{open_clip_url}/vectorize", content=target).json()["vector"])
    others = [image_bytes(make_image(200 + i, (96, 96))) for i in range(31)]
    before = _batch_histogram(open_clip_url)
    vectors = asyncio.run(_burst(open_clip_url, [*others[:15], target, *others[15:]]))
    after = _batch_histogram(open_clip_url)
    batches, single = after[0] - before[0], after[1] - before[1]
    assert batches < 32 and single < batches, f"no batching: {batches} batches, {single} of 1"
    assert _cosines(vectors[15], alone) >= 0.99999
    distinct = _cosines(np.stack(vectors[:15]), np.stack(vectors[16:31]))
    assert distinct.max() < 0.9999  # the burst's other images are really other images


async def _encode_burst(url: str, bodies: list[list[dict]]) -> list[tuple[int, object]]:
    async with aiohttp.ClientSession() as session:

        async def one(body: list[dict]) -> tuple[int, object]:
            async with session.post(f"{url}/encode", json=body) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one(body) for body in bodies))


def test_a_bad_request_in_a_burst_fails_alone(open_clip_url):
    good = [[{"img_blob": b64(image_bytes(make_image(300 + i, (64, 64))))}] for i in range(24)]
    bad = [
        [{"img_blob": b64(b"GIF89a truncated")}],
        [{"img_blob": "%%%"}],
        [{"img_uri": "ftp://example.com/x.png"}],
        [{"text": "fine"}, {"img_blob": b64(image_bytes(make_image(1), "JPEG")[:300])}],
    ]
    bodies = good[:12] + bad + good[12:]
    results = asyncio.run(_encode_burst(open_clip_url, bodies))
    statuses = [status for status, _ in results]
    assert statuses == [200] * 12 + [400] * 4 + [200] * 12, statuses
    alone = _encode(open_clip_url, good[0] + good[-1])
    got = np.array([results[0][1][0], results[-1][1][0]])
    assert _cosines(got, alone).min() >= 0.99999


def test_img_uri_to_a_loopback_server_is_refused_by_default(open_clip_url, image_server):
    response = httpx.post(
        f"{open_clip_url}/encode", json=[{"img_uri": f"{image_server}/image.png"}]
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("items[0].img_uri: refused: 127.0.0.1")


def test_multipart_forms_equal_their_json_forms(open_clip_url):
    image = image_bytes(IMAGES[0])
    cases = [
        ("/vectorize", {"files": {"upload": ("a.png", image)}}, {"content": image}),
        (
            "/encode",
            {"files": [("x", ("a.png", image)), ("y", (None, "a cat"))]},
            {"json": [{"img_blob": b64(image)}, {"text": "a cat"}]},
        ),
        (
            "/rank",
            {
                "files": [
                    ("queries", ("a.png", image)),
                    ("candidates", (None, "a")),
                    ("candidates", (None, "b")),
                ]
            },
            {
                "json": {
                    "queries": [{"img_blob": b64(image)}],
                    "candidates": [{"text": "a"}, {"text": "b"}],
                }
            },
        ),
        (
            "/classify",
            {
                "files": [
                    ("image", ("a.png", image)),
                    ("labels", (None, "a")),
                    ("labels", (None, "b")),
                    ("top_k", (None, "1")),
                ]
            },
            {"json": {"image": {"img_blob": b64(image)}, "labels": ["a", "b"], "top_k": 1}},
        ),
    ]
    for route, form, body in cases:
        from_form = httpx.post(f"{open_clip_url}{route}", **form)
        assert from_form.status_code == 200, (route, from_form.text)
        assert from_form.json() == httpx.post(f"{open_clip_url}{route}", **body).json(), route


@pytest.mark.parametrize(
    ("route", "files", "message"),
    [
        ("/vectorize", {"a": (None, "text")}, r"^a: expected an image file, got a text field"),
        (
            "/vectorize",
            {"a": ("a.png", b"x"), "b": ("b.png", b"y")},
            r"^b: send exactly one file field",
        ),
        ("/rank", {"other": (None, "x")}, r"^other: unknown field"),
        (
            "/classify",
            {"image": ("a.png", b"x"), "top_k": ("b.bin", b"1")},
            r"^top_k: expected a text field",
        ),
        ("/encode", {"a": ("a.png", b"not an image")}, r"^items\[0\]\.img_blob: not a readable"),
    ],
)
def test_bad_forms_are_400(open_clip_url, route, files, message):
    response = httpx.post(f"{open_clip_url}{route}", files=files)
    assert response.status_code == 400, response.text
    assert re.match(message, response.json()["error"]), response.json()
