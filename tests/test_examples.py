"""The examples run against a served instance, so they cannot rot."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, image_bytes, make_image

pytestmark = pytest.mark.served


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("example") / "cat.png"
    path.write_bytes(image_bytes(make_image(3, (96, 80))))
    return str(path)


def run(command: list[str]) -> str:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_curl_script_calls_every_route(open_clip_url, image):
    out = run(["bash", "examples/curl.sh", image, open_clip_url])
    for section in ("# OpenAI embeddings", "# tag and wearable", "# interrogate (best)"):
        assert section in out
    assert "<title>clip-service demo</title>" in out
    assert '"request_id":"example-1"' in out.replace(" ", "")
    assert out.rstrip().endswith('"}') and '"error"' in out.splitlines()[-1]


def test_bentoml_client(open_clip_url, image):
    out = run([sys.executable, "examples/client_bentoml.py", image, open_clip_url])
    assert "encode: 2 vectors of 32" in out and "a cat:" in out and "prompt:" in out


def test_http_client(open_clip_url, image):
    out = run([sys.executable, "examples/client_http.py", image, open_clip_url])
    assert "cosine(text, image) =" in out and "bad request: 400 items[0].img_blob" in out
