"""Zero-shot classification and the compatibility routes, served."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import pytest

from clip_service.server.classify import DEFAULT_TEMPLATE, LABEL_SETS
from tests.conftest import b64, image_bytes, make_image

pytestmark = pytest.mark.served

IMAGE = image_bytes(make_image(21))


def _vectors(url: str, items: list[dict]) -> np.ndarray:
    vectors = np.array(httpx.post(f"{url}/encode", json=items).json())
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_classify_with_caller_labels_is_clip_zero_shot(open_clip_url):
    labels = ["a cat", "a dog", "a red square", "a harbour"]
    body = {"image": {"img_blob": b64(IMAGE)}, "labels": labels, "top_k": 4}
    response = httpx.post(f"{open_clip_url}/classify", json=body)
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    image = _vectors(open_clip_url, [{"img_blob": b64(IMAGE)}])[0]
    texts = _vectors(open_clip_url, [{"text": DEFAULT_TEMPLATE.format(x)} for x in labels])
    cosines = texts @ image
    scale = httpx.get(f"{open_clip_url}/model").json()["logit_scale"]
    probabilities = np.exp(scale * cosines) / np.exp(scale * cosines).sum()
    expected = sorted(zip(labels, probabilities, cosines, strict=True), key=lambda x: -x[1])
    assert [s["label"] for s in scores] == [label for label, _, _ in expected]
    np.testing.assert_allclose(
        [s["probability"] for s in scores], [p for _, p, _ in expected], atol=1e-5
    )
    np.testing.assert_allclose(
        [s["cosine"] for s in scores], [c for _, _, c in expected], atol=1e-5
    )
    assert all(s["group"] is None for s in scores)


def test_classify_with_a_stored_set_gives_top_k_per_group(open_clip_url):
    body = {"image": {"img_blob": b64(IMAGE)}, "label_set": "pets", "top_k": 2}
    scores = httpx.post(f"{open_clip_url}/classify", json=body).json()["scores"]
    assert [s["group"] for s in scores] == ["type", "type", "fur", "fur"]
    assert {s["label"] for s in scores} <= set(LABEL_SETS["pets"].groups["type"]) | set(
        LABEL_SETS["pets"].groups["fur"]
    )
    assert scores[0]["probability"] >= scores[1]["probability"]


def test_a_custom_label_table_through_the_model_service(open_clip_url):
    """Stored and embedded by the encoder service, ranked there, answered by the entry."""
    terms = ["a red square", "a green circle", "noise"]
    put = httpx.post(f"{open_clip_url}/label-tables", json={"name": "shapes", "labels": terms})
    assert put.status_code in (200, 202), put.text
    deadline = time.monotonic() + 60
    while (tables := httpx.get(f"{open_clip_url}/label-tables").json())[0]["state"] != "ready":
        assert time.monotonic() < deadline, tables
        time.sleep(0.2)
    assert tables == [{"name": "shapes", "labels": 3, "state": "ready", "error": None}]
    image = {"img_blob": b64(image_bytes(make_image(3)))}
    body = {"image": image, "label_set": "shapes", "top_k": 2}
    scores = httpx.post(f"{open_clip_url}/classify", json=body).json()["scores"]
    assert len(scores) == 2 and {s["label"] for s in scores} <= set(terms)
    assert httpx.delete(f"{open_clip_url}/label-tables/shapes").status_code == 204


def test_tag_returns_one_tag_per_group_and_echoes_the_request_id(open_clip_url):
    response = httpx.post(
        f"{open_clip_url}/tag", files={"file": ("pet.png", IMAGE)}, headers={"request_id": "r-1"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == "r-1" == response.headers["request_id"]
    assert [t["group"] for t in body["tags"]] == ["type", "fur"]
    assert all(0 < t["confidence"] <= 1 for t in body["tags"])


def test_wearable_returns_three_categories_and_a_fresh_request_id(open_clip_url):
    response = httpx.post(f"{open_clip_url}/wearable", files={"file": ("x.jpg", IMAGE)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["top_categories"]) == 3
    assert set(body["top_categories"]) <= set(LABEL_SETS["wearables"].groups["category"])
    assert re.fullmatch(r"[0-9a-f-]{36}", body["request_id"])
    assert response.headers["x-request-id"] == body["request_id"]


def test_embeddings_form_fields_by_name(open_clip_url):
    files = [
        ("photo", ("a.png", IMAGE)),
        ("caption", (None, "a red square")),
        ("other", ("b.png", image_bytes(make_image(22)))),
    ]
    response = httpx.post(f"{open_clip_url}/embeddings", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = _vectors(
        open_clip_url,
        [
            {"img_blob": b64(IMAGE)},
            {"text": "a red square"},
            {"img_blob": b64(image_bytes(make_image(22)))},
        ],
    )
    got = np.array([body["photo"], body["caption"], body["other"]])
    np.testing.assert_allclose(
        got / np.linalg.norm(got, axis=1, keepdims=True), expected, atol=1e-5
    )
    assert body["texts_vectors"] == [body["caption"]]
    assert body["images_vectors"] == [body["photo"], body["other"]]
    assert response.headers["request_id"] == body["request_id"]


@pytest.mark.parametrize(
    ("route", "kwargs", "message"),
    [
        (
            "/classify",
            {"json": {"image": {"img_blob": b64(IMAGE)}}},
            r"^labels: give either labels or label_set",
        ),
        (
            "/classify",
            {"json": {"image": {"img_blob": b64(IMAGE)}, "label_set": "cars"}},
            r"^label_set: no custom label table .cars.; see GET /label-tables",
        ),
        (
            "/classify",
            {"json": {"image": {"img_blob": b64(IMAGE)}, "labels": ["a"], "template": "no slot"}},
            r"^template: must contain",
        ),
        (
            "/classify",
            {"json": {"image": {"img_blob": b64(IMAGE)}, "labels": []}},
            r"^labels: List should have at least 1 item",
        ),
        ("/tag", {"files": {"photo": ("a.png", IMAGE)}}, r"^file: a multipart/form-data file"),
        ("/tag", {"files": {"file": ("a.png", b"not an image")}}, r"^file: not a readable image"),
        ("/wearable", {"data": {"file": "text, not a file"}}, r"^file: a multipart"),
        ("/embeddings", {"json": {"a": "b"}}, r"^body: expected a multipart/form-data form"),
        ("/embeddings", {"files": {"x": ("a.png", b"garbage")}}, r"^x: not a readable image"),
        ("/embeddings", {"files": {"request_id": (None, "text")}}, r"^request_id: field name"),
        (
            "/tag",
            {"files": {"file": ("a.png", IMAGE)}, "headers": {"request_id": "a b"}},
            r"^request_id header: must be",
        ),
    ],
)
def test_bad_input_is_a_400(open_clip_url, route, kwargs, message):
    response = httpx.post(f"{open_clip_url}{route}", **kwargs)
    assert response.status_code == 400, response.text
    assert re.match(message, response.json()["error"]), response.json()
