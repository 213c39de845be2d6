"""The project's own Prometheus metrics, read from a served /metrics after real traffic."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clip_service.interrogation.labels import TABLE_NAMES
from tests.conftest import b64, image_bytes, make_image

pytestmark = pytest.mark.served

ENCODE_IMAGES = {"service": "ClipEncoder", "method": "encode_images", "priority": "interactive"}


def _samples(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics by (name, labels)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _burst(url: str, n: int) -> None:
    images = [image_bytes(make_image(500 + i, (96, 96))) for i in range(n)]
    async with aiohttp.ClientSession() as session:

        async def one(data: bytes) -> None:
            async with session.post(f"{url}/vectorize", data=data) as response:
                assert response.status == 200, await response.text()

        await asyncio.gather(*(one(data) for data in images))


def test_model_service_batches_are_measured(open_clip_url):
    before = _samples(open_clip_url)
    asyncio.run(_burst(open_clip_url, 32))
    after = _samples(open_clip_url)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    batches = delta("clip_service_batch_size_count", **ENCODE_IMAGES)
    items = delta("clip_service_batch_size_sum", **ENCODE_IMAGES)
    assert items == 32 and 1 <= batches < 32, f"{items} images in {batches} batches"
    assert delta("clip_service_batch_duration_seconds_count", **ENCODE_IMAGES) == batches
    assert 0 < delta("clip_service_batch_duration_seconds_sum", **ENCODE_IMAGES) < 120
    # One queue wait per call to the encoder: the entry joins the requests that arrive while
    # its call is in flight (server/coalescing.py), so a burst of 32 makes a few calls. A
    # burst on a 2-core machine queues for ms to seconds.
    calls = delta("clip_service_queue_wait_seconds_count", **ENCODE_IMAGES)
    assert 1 <= calls <= 32
    waits = delta("clip_service_queue_wait_seconds_sum", **ENCODE_IMAGES)
    assert 0 < waits / calls < 60
    bucket = "clip_service_queue_wait_seconds_bucket"
    assert delta(bucket, **ENCODE_IMAGES, le="+Inf") == calls
    # The autoscaling signal, summed over the live workers: nothing waits once all answered.
    depth = (
        "clip_service_queue_depth",
        frozenset({"service": "ClipEncoder", "priority": "interactive"}.items()),
    )
    assert after.get(depth) == 0.0, sorted(k for k in after if k[0] == depth[0])


def test_interrogations_are_counted_per_mode(open_clip_url):
    body = {"image": {"img_blob": b64(image_bytes(make_image(9, (64, 64))))}, "caption": "x"}
    before = _samples(open_clip_url)
    for mode in ("fast", "fast", "classic"):
        response = httpx.post(
            f"{open_clip_url}/interrogate", json={**body, "mode": mode}, timeout=600
        )
        assert response.status_code == 200, response.text
    after = _samples(open_clip_url)
    name = "clip_service_interrogation_duration_seconds_count"
    counts = {
        m: _value(after, name, mode=m) - _value(before, name, mode=m)
        for m in ("fast", "classic", "best")
    }
    assert counts == {"fast": 2, "classic": 1, "best": 0}
    assert _value(after, "clip_service_interrogation_duration_seconds_sum", mode="fast") > 0


def _lookups(url: str) -> dict[str, str]:
    """Built-in label table -> how its one cache lookup went, in this server's process
    (custom tables other tests add are counted too, under their own names)."""
    found = [
        (dict(labels)["table"], dict(labels)["result"], value)
        for (name, labels), value in _samples(url).items()
        if name == "clip_service_label_cache_lookups_total"
        and value
        and dict(labels)["table"] in TABLE_NAMES
    ]
    assert all(value == 1 for *_, value in found), found
    return {table: result for table, result, _ in found}


BODY = {"image": {"img_blob": b64(image_bytes(make_image(3, (64, 64))))}, "mode": "fast"}


@pytest.fixture(scope="module")
def first_lookups(open_clip_url) -> dict[str, str]:
    response = httpx.post(f"{open_clip_url}/interrogate", json=BODY, timeout=600)
    assert response.status_code == 200, response.text  # the tables are built by now
    return _lookups(open_clip_url)


@pytest.fixture(scope="module")
def restarted(first_lookups, open_clip_restarted) -> tuple[str, Path]:
    """A second server on the same models and label cache directory as the session
    server, started once that one had its tables (shared with
    tests/test_served_interrogation.py); its URL and log file."""
    server = open_clip_restarted.server
    return server.url, next(server.home.glob("serve-*.log"))


def test_label_cache_is_hit_after_a_restart(first_lookups, restarted):
    assert len(first_lookups) == 6 and set(first_lookups.values()) <= {"miss", "hit"}
    url, _ = restarted
    response = httpx.post(f"{url}/interrogate", json=BODY, timeout=600)
    assert response.status_code == 200, response.text
    assert _lookups(url) == dict.fromkeys(first_lookups, "hit")


def test_log_lines_carry_the_request_id(restarted):
    url, log = restarted
    image = image_bytes(make_image(4, (64, 64)))
    response = httpx.post(f"{url}/tag", files={"file": ("a.png", image)}, timeout=120)
    assert response.status_code == 200, response.text
    rid = response.headers["x-request-id"]
    assert response.json()["request_id"] == rid
    assert f"[request_id={rid}] request_id {rid} assigned" in log.read_text()
    given = httpx.post(f"{url}/encode", json=[{"text": "a"}], headers={"X-Request-ID": "given-1"})
    assert given.headers["x-request-id"] == "given-1"
