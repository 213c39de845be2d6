"""A model-service worker killed (SIGKILL) under load: nothing hangs, the service heals.

Requests in flight when the worker dies are sent again once (the model APIs are pure) and
wait for the new worker, or fail with a 503 JSON error carrying ``Retry-After``; the entry's
``/readyz`` answers 503 during the outage and 200 again once circus has restarted the
worker. Start-up failures (no model) are covered by test_startup.py.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlparse

import aiohttp
import psutil
import pytest

from clip_service.testing.soak import process_name, server_processes
from tests.conftest import b64, image_bytes, make_image

pytestmark = pytest.mark.served

CLIENTS = 16
# Restarting a worker imports torch and loads the model: ~10 s on 2 idle cores.
RECOVERY_LIMIT_S = 180
REQUEST_TIMEOUT_S = RECOVERY_LIMIT_S + 30


def worker(url: str, service: str) -> psutil.Process:
    root = server_processes(urlparse(url).port)
    assert root is not None, f"no process listens on {url}"
    return next(p for p in root.children(recursive=True) if process_name(p) == service)


async def readiness_after_kill(session: aiohttp.ClientSession, url: str, killed: float) -> float:
    """Poll /readyz: it must answer 503 during the outage; seconds from the kill to 200."""
    saw_outage = False
    while time.monotonic() - killed < RECOVERY_LIMIT_S:
        try:
            async with session.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(5)) as r:
                if r.status == 503:
                    saw_outage = True
                    assert r.headers.get("Retry-After"), r.headers
                elif r.status == 200 and saw_outage:
                    return time.monotonic() - killed
        except TimeoutError:
            pass
        await asyncio.sleep(0.25)
    raise AssertionError(f"/readyz not back to 200 (outage seen: {saw_outage})")


async def kill_under_load(url: str, service: str, path: str, body: object) -> dict:
    """Kill ``service``'s worker while ``CLIENTS`` requests run; returns what happened."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession() as session:

        async def one() -> tuple[int, str | None, dict | list]:
            async with session.post(f"{url}{path}", json=body, timeout=timeout) as response:
                return response.status, response.headers.get("Retry-After"), await response.json()

        async with session.post(f"{url}{path}", json=body, timeout=timeout) as warm:
            assert warm.status == 200, await warm.text()
        old = worker(url, service)
        calls = [asyncio.create_task(one()) for _ in range(CLIENTS)]
        await asyncio.sleep(0.3)  # sent, and batched or queued
        old.kill()
        killed = time.monotonic()
        recovery_s = await readiness_after_kill(session, url, killed)
        results = await asyncio.gather(*calls)  # a hung request fails on its timeout
        async with session.post(f"{url}{path}", json=body, timeout=timeout) as after:
            assert after.status == 200, await after.text()
            served_s = time.monotonic() - killed
        new = worker(url, service)
    return {"results": results, "recovery_s": recovery_s, "served_s": served_s, "pids": (old, new)}


def check(outcome: dict, service: str) -> None:
    statuses = [status for status, _, _ in outcome["results"]]
    for status, retry_after, body in outcome["results"]:
        assert status in (200, 503), (status, body)
        if status == 503:
            assert retry_after and "unavailable" in body["error"], (retry_after, body)
    # A 503 is allowed for a request the kill caught, but the requests must be served:
    # a dropped call is sent again and waits for the new worker (measured: all 16 200s).
    assert statuses.count(200) >= CLIENTS // 2, statuses
    old, new = outcome["pids"]
    assert new.pid != old.pid
    print(
        f"{service} killed: /readyz 200 again after {outcome['recovery_s']:.1f} s, "
        f"a new request served after {outcome['served_s']:.1f} s, "
        f"statuses {sorted(r[0] for r in outcome['results'])}"
    )


def test_encoder_worker_killed_under_load(open_clip_url):
    image = {"img_blob": b64(image_bytes(make_image(7, (64, 64))))}
    body = [image, {"text": "a photo of a cat"}]
    outcome = asyncio.run(kill_under_load(open_clip_url, "ClipEncoder", "/encode", body))
    check(outcome, "ClipEncoder")


def test_captioner_worker_killed_under_load(open_clip_url):
    body = {"image": {"img_blob": b64(image_bytes(make_image(8, (64, 64))))}}
    outcome = asyncio.run(kill_under_load(open_clip_url, "BlipCaptioner", "/caption", body))
    check(outcome, "BlipCaptioner")
