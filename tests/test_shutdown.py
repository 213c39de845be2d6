"""SIGTERM to `bentoml serve`: requests in flight finish, new connections are refused, exit 0."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, _wait_ready, free_port, serve_env

pytestmark = pytest.mark.served

TEXTS = 1000  # per side of a /rank: two encoder calls of a few seconds each on 2 cores


def _in_progress(url: str, endpoint: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    prefix = f'bentoml_service_request_in_progress{{endpoint="{endpoint}"'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def _refused(url: str, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/livez", timeout=1)
        except httpx.ConnectError:
            return True
        except httpx.TimeoutException:  # queued, unanswered: not refused (yet)
            pass
        time.sleep(0.1)
    return False


def test_sigterm_drains_requests_in_flight(tiny_models, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = serve_env(
        tmp_path,
        CLIP_MODEL=f"local-dir:{tiny_models['open-clip']}",
        CAPTION_MODEL=str(tiny_models["blip"]),
        MAX_RANK_PAIRS=str(TEXTS * TEXTS),  # a slow request on purpose, above the default cap
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(url, process, 180, str(log))
            _check_drain(url, process, log)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)


def _check_drain(url: str, process: subprocess.Popen, log: Path) -> None:
    body = {
        "queries": [{"text": f"query {i} about a cat"} for i in range(TEXTS)],
        "candidates": [{"text": f"candidate {i}, a dog"} for i in range(TEXTS)],
    }
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(
        target=lambda: result.update(r=httpx.post(f"{url}/rank", json=body, timeout=300))
    )
    thread.start()
    deadline = time.monotonic() + 60
    while _in_progress(url, "/rank") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.terminate()  # SIGTERM to the arbiter only, as `docker stop` does
    stopped = time.monotonic()

    assert _refused(url, within_s=5), "new connections were not refused while draining"
    thread.join(300)
    response = result["r"]
    assert response.status_code == 200, response.text
    assert len(response.json()["probabilities"]) == TEXTS
    assert process.wait(120) == 0
    elapsed = time.monotonic() - stopped
    text = log.read_text()
    # The second encoder call of the /rank was made after SIGTERM and was served.
    after = text[text.index("SIGTERM") :]
    assert "path=/encode_texts" in after and "path=/rank" in after, text[-3000:]
    assert elapsed < 60, f"took {elapsed:.0f}s to exit"
