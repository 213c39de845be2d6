"""Limits and CORS, on a server started with small limits."""

from __future__ import annotations

import re

import httpx
import pytest
from PIL import Image

from tests.conftest import b64, image_bytes, make_image, served

pytestmark = pytest.mark.served

ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def url(tiny_models, tmp_path_factory):
    with served(
        tmp_path_factory.mktemp("bentoml-limits"),
        CLIP_MODEL=str(tiny_models["hf-clip"]),
        CAPTION_MODEL=str(tiny_models["blip"]),
        MAX_BODY_BYTES="200000",
        MAX_ITEMS="3",
        MAX_TEXT_CHARS="20",
        MAX_IMAGE_PIXELS="250000",
        CORS_ALLOW_ORIGINS=ORIGIN,
        URL_ALLOW="127.0.0.1",
    ) as url:
        yield url


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "message"),
    [
        ("/vectorize", {"content": b"\0" * 200_001}, 413, r"^body: larger than 200000 bytes"),
        ("/encode", {"json": [{"text": "x"}] * 4}, 400, r"^body: List should have at most 3"),
        ("/encode", {"json": [{"text": "x" * 21}]}, 400, r"^body\[0\]\.text: String should"),
        (
            "/vectorize",
            {"content": image_bytes(Image.new("L", (600, 600)))},
            413,
            r"^body: image of 360000 pixels exceeds the limit of 250000 pixels",
        ),
        (
            "/encode",
            {"json": [{"img_blob": b64(image_bytes(Image.new("L", (501, 500))))}]},
            413,
            r"^items\[0\]\.img_blob: image of 250500 pixels exceeds",
        ),
    ],
)
def test_limits(url, path, kwargs, status, message):
    response = httpx.post(f"{url}{path}", headers={"origin": ORIGIN}, **kwargs)
    assert response.status_code == status, response.text
    assert re.match(message, response.json()["error"]), response.json()
    assert response.headers["access-control-allow-origin"] == ORIGIN  # on errors too


def test_within_limits_is_fine(url):
    response = httpx.post(
        f"{url}/encode",
        json=[{"text": "x" * 20}, {"img_blob": b64(image_bytes(Image.new("RGB", (500, 500))))}],
        headers={"origin": ORIGIN},
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_cors_preflight_and_other_origins(url):
    preflight = httpx.options(
        f"{url}/encode",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.post(f"{url}/encode", json=[{"text": "x"}], headers={"origin": "http://evil"})
    assert "access-control-allow-origin" not in other.headers


def test_img_uri_on_the_allow_list_is_fetched(url, image_server):
    fetched = httpx.post(f"{url}/encode", json=[{"img_uri": f"{image_server}/image.png"}])
    assert fetched.status_code == 200, fetched.text
    inline = httpx.post(
        f"{url}/encode", json=[{"img_blob": b64(image_bytes(make_image(42, (64, 64))))}]
    )
    assert fetched.json() == inline.json()
    missing = httpx.post(f"{url}/encode", json=[{"img_uri": f"{image_server}/nope.png"}])
    assert missing.status_code == 400
    assert missing.json()["error"] == "items[0].img_uri: fetching the URL gave HTTP 404"
