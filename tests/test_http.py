"""The entry service in process: the whole HTTP path (middlewares, route bodies, guards,
forms, error shape, the OpenAI route, classification, interrogation) with the model services
as local objects running the generated tiny models. No subprocess: this is the fast tier's
check of the HTTP glue; the served tier repeats it against real `bentoml serve` trees."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from clip_service.server.openai_embeddings import TOKEN_ARRAYS
from tests.conftest import b64, image_bytes, in_process_entry, make_image

PNG = image_bytes(make_image(1, (64, 48)))


@pytest.fixture(scope="module")
def client(tiny_models, tmp_path_factory) -> Iterator[TestClient]:
    """ClipApi's ASGI app with its lifespan run; the encoder's label tables start building
    as ``bentoml serve`` would start them (its start-up hook)."""
    home = tmp_path_factory.mktemp("in-process")
    env = {
        "CLIP_MODEL": str(tiny_models["hf-clip"]),
        "CAPTION_MODEL": str(tiny_models["blip"]),
        "BENTOML_HOME": str(home / "bentoml"),
        "LABEL_CACHE_DIR": str(home / "labels"),
        "LABEL_TABLES_DOWNLOAD": "false",
        "JOBS_DB": str(home / "jobs.sqlite3"),
        "CUSTOM_TABLES_DIR": str(home / "label-lists"),
        "MAX_CUSTOM_TABLES": "3",
        "HF_HUB_OFFLINE": "1",
    }
    import bentoml

    with in_process_entry(env) as test_client:
        encoder = bentoml.get_current_service().encoder
        test_client.portal.call(encoder.start_label_tables)  # on the app's event loop
        yield test_client


def error(response) -> str:
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


def test_encode_texts_and_images_in_input_order(client: TestClient) -> None:
    items = [{"text": "a cat"}, {"img_blob": b64(PNG)}, {"text": "a dog"}]
    vectors = np.array(client.post("/encode", json=items).json())
    assert vectors.shape[0] == 3 and np.isfinite(vectors).all()
    alone = client.post("/encode", json=[{"text": "a dog"}]).json()
    np.testing.assert_allclose(vectors[2], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/encode", [{"text": ""}], "body[0].text"),  # the JSON body itself is the list
        ("/encode", [{"img_blob": "bm90IGFuIGltYWdl"}], "items[0].img_blob"),
        ("/rank", {"queries": [{"text": "a"}]}, "candidates"),
        ("/classify", {"image": {"img_blob": b64(PNG)}}, "labels"),
    ],
)
def test_bad_json_bodies_are_a_400_naming_the_field(client, path, body, named) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert error(response).startswith(named)


def test_openai_route_errors_are_in_openais_shape(client: TestClient) -> None:
    """With ``message`` there, OpenAI's clients quote it; ``param`` names the field."""
    tokens = client.post("/v1/embeddings", json={"input": [[1, 2, 3]]})
    assert tokens.status_code == 400
    assert tokens.json()["error"] == {
        "message": f"input: {TOKEN_ARRAYS}",
        "type": "invalid_request_error",
        "param": "input",
        "code": None,
    }
    assert "check_embedding_ctx_length=False" in TOKEN_ARRAYS
    broken = client.post(
        "/v1/embeddings", content=b"{", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"


def test_bodies_that_are_not_json_or_nest_too_deep_are_a_400(client: TestClient) -> None:
    broken = client.post("/encode", content=b"[{", headers={"content-type": "application/json"})
    assert broken.status_code == 400 and "JSON" in error(broken)
    deep = client.post("/encode", content=b"[" * 100 + b"]" * 100)
    assert deep.status_code == 400 and "nest" in error(deep)


def test_vectorize_takes_raw_bytes_and_names_the_body_when_they_are_no_image(client) -> None:
    vector = client.post("/vectorize", content=PNG).json()["vector"]
    encoded = client.post("/encode", json=[{"img_blob": b64(PNG)}]).json()[0]
    np.testing.assert_allclose(vector, encoded, rtol=1e-5, atol=1e-6)
    refused = client.post("/vectorize", content=b"not an image")
    assert refused.status_code == 400 and error(refused).startswith("body: ")


@pytest.mark.parametrize(("path", "key"), [("/tag", "tags"), ("/wearable", "top_categories")])
def test_upload_routes_echo_the_request_id_and_refuse_a_bad_file_with_400(
    client, path, key
) -> None:
    files = {"file": ("photo.png", PNG, "image/png")}
    answer = client.post(path, files=files, headers={"X-Request-ID": "abc-1"})
    assert answer.status_code == 200 and answer.json()["request_id"] == "abc-1"
    assert answer.headers["x-request-id"] == "abc-1" and answer.json()[key]
    refused = client.post(path, files={"file": ("a.png", b"PK\x03\x04 zip", "image/png")})
    assert refused.status_code == 400 and error(refused).startswith("file: ")


def test_form_embeddings_answer_each_field_under_its_name(client: TestClient) -> None:
    answer = client.post(
        "/embeddings", data={"caption": "a cat"}, files={"photo": ("p.png", PNG, "image/png")}
    ).json()
    assert set(answer) >= {"caption", "photo", "texts_vectors", "images_vectors", "request_id"}
    assert answer["texts_vectors"] == [answer["caption"]]
    assert answer["images_vectors"] == [answer["photo"]]


def test_rank_gives_a_probability_row_per_query(client: TestClient) -> None:
    body = {
        "queries": [{"img_blob": b64(PNG)}, {"text": "a cat"}],
        "candidates": [{"text": "a cat"}, {"text": "a dog"}, {"text": "a car"}],
    }
    answer = client.post("/rank", json=body).json()
    probabilities = np.array(answer["probabilities"])
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    assert np.array(answer["cosine_similarities"]).shape == (2, 3)


def test_classify_by_labels_and_by_stored_set(client: TestClient) -> None:
    image = {"img_blob": b64(PNG)}
    labels = client.post("/classify", json={"image": image, "labels": ["cat", "dog", "car"]})
    scores = labels.json()["scores"]
    assert sorted(s["label"] for s in scores) == ["car", "cat", "dog"]
    assert sum(s["probability"] for s in scores) == pytest.approx(1, abs=1e-4)
    stored = client.post("/classify", json={"image": image, "label_set": "pets", "top_k": 1})
    assert {s["group"] for s in stored.json()["scores"]} == {"type", "fur"}
    bad_template = {"image": image, "labels": ["a"], "template": "{0}{x}"}
    bad_template = client.post("/classify", json=bad_template)
    assert bad_template.status_code == 400 and error(bad_template).startswith("template")


def test_openai_embeddings_are_the_normalised_encode_vectors(client: TestClient) -> None:
    raw = np.array(client.post("/encode", json=[{"text": "a cat"}]).json()[0])
    answer = client.post("/v1/embeddings", json={"input": "a cat", "model": "any"}).json()
    np.testing.assert_allclose(answer["data"][0]["embedding"], raw / np.linalg.norm(raw), atol=1e-6)
    assert answer["usage"]["prompt_tokens"] > 0
    packed = client.post("/v1/embeddings", json={"input": ["a cat"], "encoding_format": "base64"})
    unpacked = np.frombuffer(base64.b64decode(packed.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(unpacked, answer["data"][0]["embedding"], atol=1e-7)
    image = client.post("/v1/embeddings", json={"input": f"data:image/png;base64,{b64(PNG)}"})
    assert image.status_code == 200 and image.json()["usage"]["prompt_tokens"] == 0


def test_the_openapi_document_has_every_route(client: TestClient) -> None:
    paths = client.get("/docs.json").json()["paths"]
    for path in ("/encode", "/rank", "/vectorize", "/interrogate", "/model", "/embeddings"):
        assert path in paths, path


def test_interrogation_waits_for_its_tables_then_answers(client: TestClient) -> None:
    """A 503 with its progress and a Retry-After while the tables build, then prompts."""
    image = {"img_blob": b64(PNG)}
    deadline = time.monotonic() + 120
    while (tables := client.get("/model").json()["interrogation"]["label_tables"])[
        "state"
    ] != "ready":
        assert time.monotonic() < deadline, tables
        refused = client.post("/interrogate", json={"image": image, "mode": "fast"})
        if refused.status_code == 503:
            assert "label tables" in error(refused) and int(refused.headers["retry-after"]) > 0
        time.sleep(0.5)
    answer = client.post("/interrogate", json={"image": image, "mode": "fast"}).json()
    assert answer["prompt"].startswith(answer["caption"]) and answer["mode"] == "fast"
    analysis = client.post("/analyze", json={"image": image, "top_k": 2}).json()
    assert analysis.pop("label_tables") is None  # none asked for
    assert all(len(ranked) == 2 for ranked in analysis.values())


def weaviate_vectorize(client: TestClient, body: object) -> tuple[int, dict]:
    """As Weaviate's Go client sends it: a JSON body and no Content-Type."""
    response = client.post("/vectorize", content=json.dumps(body).encode())
    return response.status_code, response.json()


def test_weaviate_multi2vec_clip_contract(client: TestClient) -> None:
    assert client.get("/.well-known/live").status_code == 204
    assert client.get("/.well-known/ready").status_code == 204
    meta = client.get("/meta").json()
    status, answer = weaviate_vectorize(client, {"texts": ["a cat", "a dog"], "images": [b64(PNG)]})
    assert status == 200 and set(answer) == {"textVectors", "imageVectors"}
    raw = np.array(client.post("/encode", json=[{"text": "a cat"}, {"img_blob": b64(PNG)}]).json())
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(answer["textVectors"][0], expected[0], atol=1e-6)
    np.testing.assert_allclose(answer["imageVectors"][0], expected[1], atol=1e-6)
    assert len(answer["textVectors"]) == 2 and len(answer["imageVectors"][0]) == meta["dimensions"]
    status, nil_lists = weaviate_vectorize(client, {"texts": ["a cat"], "images": None})
    assert status == 200 and nil_lists["imageVectors"] == []
    raw_bytes = client.post("/vectorize", content=PNG).json()["vector"]  # its own contract
    np.testing.assert_allclose(raw_bytes, raw[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"texts": [""]}, "texts[0]"),
        ({"texts": "a cat"}, "texts"),
        ({"images": ["bm90IGFuIGltYWdl"]}, "images[0].img_blob"),
        ({"texts": [1]}, "texts[0]"),
    ],
)
def test_weaviate_errors_are_a_string_naming_the_field(client, body, named) -> None:
    """Weaviate reads ``error`` as a string (an object would fail its unmarshalling)."""
    status, answer = weaviate_vectorize(client, body)
    assert status == 400 and isinstance(answer["error"], str)
    assert answer["error"].startswith(f"{named}: "), answer
    deep = client.post("/vectorize", content=b'{"texts":' + b"[" * 100 + b"]" * 100 + b"}")
    assert deep.status_code == 400 and "nested" in error(deep)


def test_a_job_gives_what_its_route_gives(client: TestClient) -> None:
    """After the tables test above: tables ready. Submit, poll, fetch; bad input is a 400
    at submission, not a failed job."""
    body = {"image": {"img_blob": b64(PNG)}, "mode": "fast"}
    submitted = client.post("/jobs/interrogate", json=body)
    assert submitted.status_code == 202 and submitted.json()["status"] == "queued"
    location = submitted.headers["location"]
    for _ in range(600):
        if (status := client.get(location).json())["status"] not in ("queued", "running"):
            break
        time.sleep(0.05)
    assert status["status"] == "succeeded", status
    expected = client.post("/interrogate", json=body).json()
    assert client.get(f"{location}/result").json() == expected
    refused = client.post("/jobs/interrogate", json={"image": {"img_blob": "bm90IGFuIGltYWdl"}})
    assert refused.status_code == 400 and error(refused).startswith("image.img_blob: ")
    unknown = client.post("/jobs/interrogate", json={**body, "label_tables": ["nope"]})
    assert unknown.status_code == 400, unknown.text
    assert error(unknown).startswith("label_tables: no custom label table 'nope'")


def wait_for_table(client: TestClient, name: str) -> dict:
    for _ in range(400):
        tables = {t["name"]: t for t in client.get("/label-tables").json()}
        if tables.get(name, {}).get("state") == "ready":
            return tables[name]
        time.sleep(0.05)
    raise AssertionError(f"custom label table {name} not ready: {tables}")


def test_custom_label_tables_in_classify_analyze_and_interrogate(client: TestClient) -> None:
    deadline = time.monotonic() + 120
    while client.get("/model").json()["interrogation"]["label_tables"]["state"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    colors = ["red", "green", "blue", "a red square"]
    put = client.post("/label-tables", json={"name": "colors", "labels": colors})
    assert put.status_code in (200, 202) and put.json()["labels"] == 4
    assert wait_for_table(client, "colors") == {
        "name": "colors",
        "labels": 4,
        "state": "ready",
        "error": None,
    }
    image = {"img_blob": b64(PNG)}
    scores = client.post("/classify", json={"image": image, "label_set": "colors"}).json()
    scores = scores["scores"]
    assert sorted(s["label"] for s in scores) == sorted(colors)
    assert sum(s["probability"] for s in scores) == pytest.approx(1, abs=1e-4)
    assert {s["group"] for s in scores} == {"colors"}
    # The cosines are the terms' own embeddings (no template), as LabelTable ranks them.
    image_vector = np.array(client.post("/encode", json=[image]).json()[0])
    terms = np.array(client.post("/encode", json=[{"text": t} for t in colors]).json())
    expected = (terms / np.linalg.norm(terms, axis=1, keepdims=True)) @ (
        image_vector / np.linalg.norm(image_vector)
    )
    for score in scores:
        cosine = expected[colors.index(score["label"])]
        assert score["cosine"] == pytest.approx(cosine, abs=2e-3)  # float16 table, as 0.6.0
    analysis = client.post(
        "/analyze", json={"image": image, "top_k": 2, "label_tables": ["colors"]}
    )
    assert [t["label"] for t in analysis.json()["label_tables"]["colors"]] == [
        s["label"] for s in scores[:2]
    ]
    plain = client.post("/interrogate", json={"image": image, "mode": "fast"}).json()
    extra = {"image": image, "mode": "fast", "label_tables": ["colors"]}
    with_table = client.post("/interrogate", json=extra).json()
    assert (
        with_table["prompt"] == plain["prompt"] and len(with_table["label_tables"]["colors"]) == 4
    )


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"name": "Bad Name", "labels": ["a"]}, "name"),
        ({"name": 3, "labels": ["a"]}, "name"),  # the app's own validation
        ({"name": "missing"}, "labels"),
        ({"name": "empty", "labels": []}, "labels"),
        ({"name": "blank", "labels": ["a", " "]}, "labels[1]"),
        ({"name": "lines", "labels": ["a\nb"]}, "labels[0]"),
        ({"name": "long", "labels": ["x" * 5000]}, "labels[0]"),
    ],
)
def test_bad_label_lists_are_a_400_naming_the_field(client, body, named) -> None:
    refused = client.post("/label-tables", json=body)
    assert refused.status_code == 400 and error(refused).startswith(f"{named}: "), refused.text


def test_custom_tables_come_from_the_directory_are_limited_and_deleted(client) -> None:
    directory = Path(os.environ["CUSTOM_TABLES_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "animals.txt").write_text("cat\ndog\n\nbird\n")
    assert wait_for_table(client, "animals")["labels"] == 3
    (directory / "animals.txt").write_text("cat\ndog\n")  # an edited file is read again
    for _ in range(100):
        if wait_for_table(client, "animals")["labels"] == 2:
            break
        time.sleep(0.05)
    assert wait_for_table(client, "animals")["labels"] == 2
    image = {"img_blob": b64(PNG)}
    unknown = client.post("/classify", json={"image": image, "label_set": "nope"})
    assert unknown.status_code == 400 and error(unknown).startswith("label_set: no custom")
    templated = {"image": image, "label_set": "animals", "template": "a photo of {}"}
    assert error(client.post("/classify", json=templated)).startswith("template: ")
    for i in range(3 - len(client.get("/label-tables").json())):  # MAX_CUSTOM_TABLES=3
        client.post("/label-tables", json={"name": f"filler-{i}", "labels": ["x"]})
    full = client.post("/label-tables", json={"name": "one-more", "labels": ["y"]})
    assert full.status_code == 400 and error(full).startswith("name: there are 3 custom")
    assert client.delete("/label-tables/animals").status_code == 204
    assert client.delete("/label-tables/animals").status_code == 404
    assert "animals" not in {t["name"] for t in client.get("/label-tables").json()}
