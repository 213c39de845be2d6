"""A fresh server, as a new user meets it: CLIP answers at once while the label tables are
still being built in the background; interrogation says how far they are instead of
hanging (that waiters never cancel the build is tests/test_table_build.py's); a CLIP-only
deployment (CAPTION_MODEL=none) starts no captioner and builds nothing.

The build is slowed down deterministically with a tiny bulk slice (one label per model
call), so it is still running while the test looks, on any machine of this kind.
"""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
import numpy as np
import psutil
import pytest
from selenium.webdriver.common.by import By

from tests.conftest import b64, image_bytes, make_image, served
from tests.test_ui_browser import wait_text

pytestmark = pytest.mark.served

IMAGES = [image_bytes(make_image(700 + i, (96, 96))) for i in range(64)]
IMAGE_BODY = {"image": {"img_blob": b64(IMAGES[0])}}


def tables(url: str) -> dict:
    return httpx.get(f"{url}/model", timeout=30).json()["interrogation"]["label_tables"]


async def vectorize_all(url: str) -> list[tuple[int, list[float]]]:
    async with aiohttp.ClientSession() as session:

        async def one(data: bytes) -> tuple[int, list[float]]:
            async with session.post(f"{url}/vectorize", data=data) as response:
                body = await response.json()
                return response.status, body.get("vector", body)

        return await asyncio.gather(*(one(data) for data in IMAGES))


# The CLIP-only deployment first: the fresh server's slowed build (below) keeps a core busy
# for as long as that server runs, which is to the end of the module.
@pytest.fixture(scope="module")
def clip_only(clip_only_server):
    """The session's CLIP-only server (shared with tests/test_ui_browser.py)."""
    return clip_only_server.url, clip_only_server.home


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/caption", IMAGE_BODY),
        ("/interrogate", IMAGE_BODY),
        ("/analyze", IMAGE_BODY),
        ("/extract_text", None),
    ],
)
def test_clip_only_refuses_interrogation_naming_the_setting(clip_only, route, body):
    url, _ = clip_only
    if body is None:
        response = httpx.post(f"{url}{route}", content=IMAGES[0], timeout=30)
    else:
        response = httpx.post(f"{url}{route}", json=body, timeout=30)
    assert response.status_code == 501, response.text
    assert "CAPTION_MODEL=none" in response.json()["error"]


def test_clip_only_serves_clip_and_starts_nothing_else(clip_only):
    url, home = clip_only
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert httpx.get(f"{url}/model").json()["interrogation"] is None
    response = httpx.post(f"{url}/encode", json=[{"text": "a cat"}, {"img_blob": b64(IMAGES[1])}])
    assert response.status_code == 200 and len(response.json()) == 2
    commands = [" ".join(p.cmdline()) for p in _server_processes(home)]
    assert any("ClipEncoder" in c for c in commands), commands
    assert not any("BlipCaptioner" in c for c in commands), commands
    assert not (home / "label-cache").exists()  # no table was built or written


def _server_processes(home) -> list[psutil.Process]:
    """Every process of the server started for ``home`` (its BENTOML_HOME)."""
    found = []
    for process in psutil.process_iter(["environ"]):
        try:
            if (process.info["environ"] or {}).get("BENTOML_HOME") == str(home):
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_demo_page_hides_interrogation_on_a_clip_only_server(clip_only, browser):
    url, _ = clip_only
    browser.get(f"{url}/ui")
    wait_text(browser, "#model-info", lambda text: text.endswith("CLIP only"))
    assert not browser.find_element(By.ID, "describe-section").is_displayed()
    assert browser.find_element(By.ID, "classify-form").is_displayed()


@pytest.fixture(scope="module")
def fresh(tiny_models, tmp_path_factory):
    home = tmp_path_factory.mktemp("bentoml-fresh")
    env = {
        "CLIP_MODEL": f"local-dir:{tiny_models['open-clip']}",
        "CAPTION_MODEL": str(tiny_models["blip"]),
        "LABEL_CACHE_DIR": str(home / "label-cache"),
        "BULK_SLICE_MS": "0.001",  # one label per model call: the build takes minutes
        "REQUEST_TIMEOUT_S": "60",  # so interrogation waits for the tables 30 s at most
    }
    with served(home, **env) as url:
        yield url


def test_clip_answers_a_burst_while_the_tables_build(fresh):
    assert tables(fresh)["state"] == "building"
    results = asyncio.run(vectorize_all(fresh))
    assert [status for status, _ in results] == [200] * 64, results[:3]
    alone = httpx.post(f"{fresh}/vectorize", content=IMAGES[5]).json()["vector"]
    got, expected = np.array(results[5][1]), np.array(alone)
    assert got @ expected / np.linalg.norm(got) / np.linalg.norm(expected) >= 0.99999
    text = httpx.post(f"{fresh}/encode", json=[{"text": "a cat"}], timeout=30)
    assert text.status_code == 200, text.text
    assert tables(fresh)["state"] == "building"  # all of this happened during the build


def test_interrogation_before_the_tables_is_a_503_with_progress(fresh):
    before = tables(fresh)
    assert before["state"] == "building" and before["labels_total"] == 111_908
    response = httpx.post(f"{fresh}/interrogate", json=IMAGE_BODY, timeout=30)
    assert response.status_code == 503, response.text
    assert 5 <= int(response.headers["retry-after"]) <= 300
    message = response.json()["error"]
    assert "labels embedded" in message and "of 111,908" in message, message
    analyze = httpx.post(f"{fresh}/analyze", json=IMAGE_BODY, timeout=30)
    assert analyze.status_code == 503 and "labels embedded" in analyze.json()["error"]
