"""Work nobody waits for stops, expensive work is admitted or refused up front, and one
small request cannot take the machine's memory: checked on a real `bentoml serve`.

Cancellation is seen in the encoder's own batch counter (its interrogation-priority
batches, reported through the entry's ``/metrics``): after the entry gives up on an
interrogation (its 504, a client that hangs up, a deleted or timed-out job), the encoder
runs no more of it. A best-mode prompt search over 200 flavors keeps the tiny models busy
for about a minute, so a chain that went on would show dozens of batches.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import httpx
import pytest
from PIL import Image

from tests.conftest import (
    b64,
    copy_label_tables,
    image_bytes,
    make_image,
    metric_total,
    served,
)

pytestmark = pytest.mark.served

REQUEST_TIMEOUT_S = 4
JOB_TIMEOUT_S = 6
MAX_QUEUED = 2
# 200 chain steps (MAX_FLAVORS raised for this server): about a minute of the tiny models'
# work, far past both limits on any machine, so a chain that went on is always seen.
FLAVORS = 200
LONG = {"mode": "best", "min_flavors": FLAVORS, "max_flavors": FLAVORS}
IMAGE = {"img_blob": b64(image_bytes(make_image(7, (96, 96))))}
SETTLE_S = 1.0  # a batch already running when the cancel arrives may still finish


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bentoml-cancel")


@pytest.fixture(scope="module")
def url(tiny_models, home, open_clip_server) -> Iterator[str]:
    # The session server's tables, loaded in seconds: this module needs them, not their build.
    label_cache = copy_label_tables(open_clip_server, home / "label-cache")
    with served(
        home,
        CLIP_MODEL=f"local-dir:{tiny_models['open-clip']}",
        CAPTION_MODEL=str(tiny_models["blip"]),
        LABEL_CACHE_DIR=str(label_cache),
        REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S),
        JOB_TIMEOUT_S=str(JOB_TIMEOUT_S),
        MAX_QUEUED_INTERROGATIONS=str(MAX_QUEUED),
        MAX_FLAVORS=str(FLAVORS),
        ENTRY_WORKERS="1",
    ) as url:
        deadline = time.monotonic() + 300
        while (
            httpx.get(f"{url}/model", timeout=30).json()["interrogation"]["label_tables"]["state"]
            != "ready"
        ):
            assert time.monotonic() < deadline, "label tables not ready"
            time.sleep(1)
        yield url


def model_batches(url: str) -> tuple[float, float]:
    """(encoder batches at interrogation priority, captioner batches) run so far."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    name = "clip_service_batch_size_count"
    return (
        metric_total(text, name, service="ClipEncoder", priority="interrogation"),
        metric_total(text, name, service="BlipCaptioner"),
    )


def wait_for_chain(url: str, before: float, timeout_s: float = 30) -> None:
    """Until the encoder has run interrogation batches past ``before``."""
    deadline = time.monotonic() + timeout_s
    while model_batches(url)[0] <= before:
        assert time.monotonic() < deadline, "the interrogation never reached the encoder"
        time.sleep(0.1)


def assert_encoder_stops(url: str, home: Path) -> None:
    """No interrogation batch runs once the one in flight (if any) has finished, and no
    service logged the cancellation as an error."""
    time.sleep(SETTLE_S)
    settled = model_batches(url)[0]
    time.sleep(3)
    assert model_batches(url)[0] == settled, "the encoder went on with a cancelled chain"
    for log in home.glob("serve-*.log"):
        assert "Exception in ASGI application" not in log.read_text(errors="replace"), log


def test_unknown_label_table_is_a_400_with_no_model_work(url):
    before = model_batches(url)
    for route in ("/interrogate", "/analyze"):
        body = {"image": IMAGE, **LONG, "label_tables": ["no-such-table"]}
        if route == "/analyze":
            body = {"image": IMAGE, "label_tables": ["no-such-table"]}
        answer = httpx.post(f"{url}{route}", json=body, timeout=60)
        assert answer.status_code == 400, answer.text
        assert "no-such-table" in answer.json()["error"]
    time.sleep(2)
    assert model_batches(url) == before


def test_after_a_504_the_encoder_stops(url, home):
    before = model_batches(url)[0]
    start = time.monotonic()
    answer = httpx.post(f"{url}/interrogate", json={"image": IMAGE, **LONG}, timeout=60)
    assert answer.status_code == 504, answer.text
    assert time.monotonic() - start < REQUEST_TIMEOUT_S + 3
    assert model_batches(url)[0] > before, "the chain never ran: nothing was cancelled"
    assert_encoder_stops(url, home)


def test_a_client_that_hangs_up_stops_the_encoder(url, home):
    before = model_batches(url)[0]

    async def hang_up() -> None:
        async with aiohttp.ClientSession() as session:
            body = {"image": IMAGE, **LONG}
            with pytest.raises(TimeoutError):
                await session.post(
                    f"{url}/interrogate", json=body, timeout=aiohttp.ClientTimeout(total=2.5)
                )

    asyncio.run(hang_up())
    assert model_batches(url)[0] > before, "the chain never ran: nothing was cancelled"
    assert_encoder_stops(url, home)


def _job(url: str, job_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while (status := httpx.get(f"{url}/jobs/{job_id}", timeout=30).json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return status


def test_a_deleted_job_stops_the_encoder(url, home):
    before = model_batches(url)[0]
    submitted = httpx.post(f"{url}/jobs/interrogate", json={"image": IMAGE, **LONG}, timeout=60)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    wait_for_chain(url, before)
    assert httpx.delete(f"{url}/jobs/{job_id}", timeout=30).status_code == 200
    assert _job(url, job_id)["status"] == "cancelled"
    assert_encoder_stops(url, home)


def test_a_job_past_job_timeout_fails_with_timeout_and_stops(url, home):
    before = model_batches(url)[0]
    submitted = httpx.post(f"{url}/jobs/interrogate", json={"image": IMAGE, **LONG}, timeout=60)
    assert submitted.status_code == 202, submitted.text
    status = _job(url, submitted.json()["id"])
    # JOB_TIMEOUT_S, not REQUEST_TIMEOUT_S (shorter) or the model service's traffic timeout.
    assert status["status"] == "failed" and status["error"].startswith("timeout"), status
    assert f"{JOB_TIMEOUT_S:g} s" in status["error"]
    assert model_batches(url)[0] > before
    assert_encoder_stops(url, home)


def test_interrogations_past_the_queue_are_refused_at_once(url):
    """2 run and MAX_QUEUED wait; the rest are refused at arrival with Retry-After."""
    count = 12
    body = {"image": IMAGE, "mode": "fast"}

    async def burst() -> list[tuple[int, float, dict, str | None]]:
        async with aiohttp.ClientSession() as session:

            async def one() -> tuple[int, float, dict, str | None]:
                start = time.monotonic()
                async with session.post(f"{url}/interrogate", json=body) as r:
                    answer = await r.json()
                    return r.status, time.monotonic() - start, answer, r.headers.get("Retry-After")

            return await asyncio.gather(*(one() for _ in range(count)))

    results = asyncio.run(burst())
    served_ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(served_ok) + len(refused) == count, [r[:3] for r in results]
    assert 1 <= len(served_ok) <= 2 + MAX_QUEUED, [r[:3] for r in results]
    assert len(refused) >= count - 2 - MAX_QUEUED
    slowest_ok = max(seconds for _, seconds, _, _ in served_ok)
    for _, seconds, answer, retry_after in refused:
        assert answer["error"].startswith("busy: interrogations"), answer
        assert retry_after and int(retry_after) >= 1
        assert seconds < slowest_ok, "a refusal must come before the work it waited behind"
    assert all(answer["prompt"] for _, _, answer, _ in served_ok)


def _server_rss_bytes(url: str) -> int:
    """Resident memory of every process serving on the URL's port (the whole process tree)."""
    port = urlsplit(url).port
    listener = _listening_pid(port)
    tree = {listener}
    while True:
        grown = tree | {pid for pid, parent in _parents().items() if parent in tree}
        if grown == tree:
            break
        tree = grown
    root = _parents().get(listener)
    tree |= {root} | {pid for pid, parent in _parents().items() if parent == root}
    return sum(_rss(pid) for pid in tree)


def _parents() -> dict[int, int]:
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(stat.parent.name)] = int(fields[1])
    return found


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _listening_pid(port: int) -> int:
    """The process holding the listening socket on ``port`` (from /proc's socket inodes)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                target = str(fd.readlink())
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(fd_dir.parent.name)
        except OSError:
            continue
    raise AssertionError(f"no process listens on {port}")


def _palette_png(pixels: int) -> bytes:
    """A palette PNG of about ``pixels`` pixels: a few KB that decode to hundreds of MB."""
    width = 8000
    return image_bytes(Image.new("P", (width, pixels // width)))


def test_small_bodies_of_huge_images_stay_within_the_decode_budget(url):
    """Two concurrent /encode bodies of 8 40-megapixel palette PNGs (about 1 MB in all):
    without a bound each would decode all at once (several GiB); with it the server's memory
    grows by about one image's decoding."""
    png = _palette_png(40_000_000)
    assert len(png) < 200_000
    body = [{"img_blob": b64(png)}] * 8
    baseline = _server_rss_bytes(url)
    peak, done = baseline, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _server_rss_bytes(url))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:

        async def both() -> list[int]:
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S * 60)
            async with aiohttp.ClientSession(timeout=timeout) as session:

                async def one() -> int:
                    async with session.post(f"{url}/encode", json=body) as r:
                        return r.status

                return await asyncio.gather(one(), one())

        statuses = asyncio.run(both())
    finally:
        done.set()
        sampler.join()
    # REQUEST_TIMEOUT_S is short here: each request either finished or was cut off by it,
    # and either way decoding had to respect the budget for as long as it ran.
    assert set(statuses) <= {200, 504}, statuses
    growth = peak - baseline
    print(f"peak growth {growth / 2**30:.2f} GiB for {statuses}")
    assert growth < 1.5 * 2**30, f"memory grew by {growth / 2**30:.1f} GiB"


def test_socket_helper_sees_the_server(url):
    """The memory test's process lookup finds the server (else it would measure nothing)."""
    port = urlsplit(url).port
    with socket.create_connection(("127.0.0.1", port)):
        assert _server_rss_bytes(url) > 100 * 2**20
