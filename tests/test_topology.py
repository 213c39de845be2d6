"""The replicated topology (clip_service/testing/topology.py): Redis, two encoder replicas
and two entry replicas, each pair behind an HAProxy balancer, on loopback.

What a second replica must see, it sees: a job polled through the balancer is found on
every poll, a running job's chain step through every entry (and a cancel through the other
entry reaches the encoder), a custom table uploaded to one entry on every encoder. What
dies is survived: an encoder killed under load costs at most the requests it had in flight
(each a 503 with Retry-After), an entry killed while it ran a job leaves the job ``failed``
with a resubmit error on the other replica within its lease, and Redis restarted loses no
finished job (while it is down a job route is a 503, not a 500).

The destructive tests run last, in that order; the replicas they kill stay dead, and Redis
is started again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp
import httpx
import pytest

from clip_service.server.jobs import LEASE_S
from clip_service.state.job_store import FINISHED
from clip_service.testing.topology import ENCODERS, ENTRIES, Topology, topology
from tests.conftest import b64, copy_label_tables, image_bytes, make_image

pytestmark = pytest.mark.served

# Best mode with up to 200 flavors: the chain runs until the prompt fills CLIP's context (a
# dozen steps or so, most of a job of 10-20 s on the tiny models): long enough to poll.
FLAVORS = 200
LONG = {"mode": "best", "min_flavors": FLAVORS, "max_flavors": FLAVORS}
IMAGE = {"img_blob": b64(image_bytes(make_image(19, (96, 96))))}
SETTINGS = {"ENTRY_WORKERS": "1", "MAX_FLAVORS": str(FLAVORS), "REQUEST_TIMEOUT_S": "30"}


@pytest.fixture(scope="module")
def deployment(tiny_models, open_clip_server, tmp_path_factory) -> Iterator[Topology]:
    root = tmp_path_factory.mktemp("topology")
    # The session server's tables: each encoder loads a copy instead of encoding them.
    tables = copy_label_tables(open_clip_server, root / "label-tables")
    models = tiny_models["open-clip"].parent
    with topology(models, root / "replicas", tables, env=SETTINGS) as running:
        for url in running.encoders.values():
            _wait_for_tables(url)
        yield running


def _wait_for_tables(encoder: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while (state := httpx.post(f"{encoder}/builtin_tables", json={}, timeout=30).json())[
        "state"
    ] != "ready":
        assert time.monotonic() < deadline, state
        time.sleep(0.5)


def _submit(url: str, **body: object) -> str:
    answer = httpx.post(f"{url}/jobs/interrogate", json={"image": IMAGE, **body}, timeout=60)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def _until(url: str, job_id: str, states: tuple[str, ...], timeout_s: float = 120) -> dict:
    """Poll a job until its status is one of ``states``, as a client does: every poll
    finds it, or is a 503 to retry."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = httpx.get(f"{url}/jobs/{job_id}", timeout=30)
        assert answer.status_code == 200 or _retryable(answer), answer.text
        if answer.status_code == 200 and (status := answer.json())["status"] in states:
            return status
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.1)


def _retryable(answer: httpx.Response) -> bool:
    """A 503 a client can act on: JSON ``error`` and a Retry-After."""
    try:
        error = answer.json().get("error")
    except ValueError:
        return False
    return answer.status_code == 503 and bool(error) and bool(answer.headers.get("retry-after"))


def test_a_job_is_found_on_every_poll_through_the_balancer(deployment):
    front = deployment.front
    job_id = _submit(front, mode="fast")
    logged = len(deployment.served("front"))
    answers = [httpx.get(f"{front}/jobs/{job_id}", timeout=30) for _ in range(50)]
    codes = Counter(a.status_code for a in answers)
    assert codes == {200: 50}, (codes, [a.text for a in answers if a.status_code != 200][:3])
    assert {a.json()["id"] for a in answers} == {job_id}
    assert _until(front, job_id, FINISHED)["status"] == "succeeded"
    results = [httpx.get(f"{front}/jobs/{job_id}/result", timeout=30) for _ in range(4)]
    assert [r.status_code for r in results] == [200] * 4, [r.text for r in results]
    assert results[0].json()["prompt"] and all(r.json() == results[0].json() for r in results)
    polled = Counter(r for r, _, _, path in deployment.served("front")[logged:] if job_id in path)
    print(f"polls and result fetches answered by {dict(polled)}")
    assert set(polled) == set(ENTRIES), polled  # both replicas answered: a shared store


def test_a_running_jobs_chain_step_is_seen_through_every_entry(deployment):
    """While the chain runs, every poll of every entry shows its step, not only the polls
    that reach the encoder running it: per entry, the polls that show the chain are one
    unbroken run, its steps never going back. A cancel through the other entry stops it."""
    entry_1, entry_2 = (deployment.entries[n] for n in ENTRIES)
    job_id = _submit(entry_1, **LONG)
    polls: dict[str, list[dict]] = {entry_1: [], entry_2: []}
    deadline = time.monotonic() + 120

    def chain(seen: list[dict]) -> list[int]:
        return [i for i, job in enumerate(seen) if job["progress"]["stage"] == "chain"]

    while not all(len(chain(seen)) >= 5 for seen in polls.values()):
        for url, seen in polls.items():
            answer = httpx.get(f"{url}/jobs/{job_id}", timeout=30)
            assert answer.status_code == 200, answer.text
            seen.append(answer.json())
        if seen[-1]["status"] in FINISHED:
            break
        assert time.monotonic() < deadline, seen[-1]
        time.sleep(0.05)
    abandoned = _abandoned_searches(deployment)
    cancelled = httpx.delete(f"{entry_2}/jobs/{job_id}", timeout=30)
    assert cancelled.status_code == 200, cancelled.text
    for url, seen in polls.items():
        at = chain(seen)
        progress = [job["progress"] for job in seen]
        assert len(at) >= 5 and at == list(range(at[0], at[-1] + 1)), (url, progress)
        steps = [seen[i]["progress"]["step"] for i in at]
        assert steps == sorted(steps), (url, steps)
        assert {seen[i]["progress"]["steps"] for i in at} == {FLAVORS}, (url, progress)
        print(f"{url}: {len(seen)} polls, chain steps {steps[0]}..{steps[-1]}")
    if cancelled.json()["status"] not in FINISHED:
        assert _until(entry_1, job_id, FINISHED, timeout_s=5)["status"] == "cancelled"
        # The cancel reaches the encoder running the chain, through its balancer.
        deadline = time.monotonic() + 5
        while _abandoned_searches(deployment) == abandoned:
            assert time.monotonic() < deadline, "the encoder went on with a cancelled job"
            time.sleep(0.2)


def _abandoned_searches(deployment: Topology) -> int:
    """Prompt searches an encoder stopped because their caller had gone (logged as 499)."""
    return sum(
        "path=/search_prompt" in line and "status=499" in line
        for name in ENCODERS
        for line in deployment.log(name).splitlines()
    )


def _table_state(encoder: str, table: str) -> str | None:
    """A custom table's state on one encoder replica (asked directly)."""
    statuses = httpx.post(f"{encoder}/custom_tables", json={}, timeout=30).json()
    return next((t["state"] for t in statuses if t["name"] == table), None)


def _classify(url: str, table: str) -> httpx.Response:
    return httpx.post(f"{url}/classify", json={"image": IMAGE, "label_set": table}, timeout=30)


def _classify_round(deployment: Topology, table: str) -> list[httpx.Response]:
    """/classify through each entry, each followed by one /encode: a /classify is two
    encoder calls (encode, rank), and without the odd one the round robin could send
    every ranking to the same encoder."""
    answers = []
    for url in deployment.entries.values():
        answers.append(_classify(url, table))
        shift = httpx.post(f"{url}/encode", json=[{"text": "a shift"}], timeout=30)
        assert shift.status_code == 200, shift.text
    return answers


def test_a_custom_table_uploaded_to_one_entry_is_used_on_every_replica(deployment):
    table, labels = "topology-colours", ["crimson", "teal", "ochre", "violet", "olive"]
    uploaded = time.monotonic()
    answer = httpx.post(
        f"{deployment.entries['entry-1']}/label-tables",
        json={"name": table, "labels": labels},
        timeout=30,
    )
    assert answer.status_code in (200, 202), answer.text
    early = Counter()
    while True:
        states = {name: _table_state(url, table) for name, url in deployment.encoders.items()}
        answers = _classify_round(deployment, table)
        if set(states.values()) == {"ready"} and all(a.status_code == 200 for a in answers):
            break
        for a in answers:
            # Not yet taken up by an encoder (a 400 naming it), or being embedded there.
            early[a.status_code] += 1
            assert a.status_code in (200, 400) or _retryable(a), a.text
            assert a.status_code != 400 or table in a.text, a.text
        assert time.monotonic() - uploaded < 5, (states, [a.text for a in answers])
        time.sleep(0.2)
    ready_s = time.monotonic() - uploaded
    logged = len(deployment.served("encoders"))
    answers = [a for _ in range(3) for a in _classify_round(deployment, table)]
    assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers]
    ranked = {tuple(s["label"] for s in a.json()["scores"]) for a in answers}
    assert len(ranked) == 1 and set(next(iter(ranked))) <= set(labels), ranked
    rankers = Counter(
        replica
        for replica, status, _, path in deployment.served("encoders")[logged:]
        if path == "/rank_custom_tables" and status == 200
    )
    print(f"ready on every replica {ready_s:.1f} s after the upload; early answers {early}")
    print(f"rankings by {dict(rankers)}")
    assert set(rankers) == set(ENCODERS), rankers
    for url in deployment.entries.values():
        listed = httpx.get(f"{url}/label-tables", timeout=30).json()
        assert any(t["name"] == table and t["state"] == "ready" for t in listed), listed


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    outcome: str  # "200", "503" (retryable), else what went wrong


async def _steady_load(url: str, clients: int, stop: threading.Event) -> list[Outcome]:
    """``clients`` callers sending /encode (texts, then images, in turn) until ``stop``."""
    bodies = [
        [{"text": f"a photo of a {word}"} for word in ("cat", "dog", "boat", "tree")],
        [{"img_blob": b64(image_bytes(make_image(500 + i, (64, 64))))} for i in range(2)],
    ]
    outcomes: list[Outcome] = []
    timeout = aiohttp.ClientTimeout(total=30)

    async def caller(index: int) -> None:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            sent = index
            while not stop.is_set():
                started = time.monotonic()
                try:
                    async with session.post(f"{url}/encode", json=bodies[sent % 2]) as answer:
                        body = await answer.json(content_type=None)
                        outcome = str(answer.status)
                        if answer.status == 503 and not (
                            answer.headers.get("Retry-After") and body.get("error")
                        ):
                            outcome = f"503 without Retry-After or error: {body}"
                        elif answer.status not in (200, 503):
                            outcome = f"{answer.status}: {str(body)[:200]}"
                except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                outcomes.append(Outcome(started, time.monotonic(), outcome))
                sent += 1

    await asyncio.gather(*(caller(i) for i in range(clients)))
    return outcomes


def test_an_encoder_killed_under_load_costs_only_its_requests_in_flight(deployment):
    """Callers keep sending /encode through the front balancer while an encoder replica is
    killed (SIGKILL): a request may fail only if it was in flight when the replica died, and
    then with a 503 to retry; one sent after (even before its balancer has marked it down)
    is served by the other replica. Nothing hangs."""
    stop = threading.Event()
    load: list[list[Outcome]] = []
    runner = threading.Thread(
        target=lambda: load.append(asyncio.run(_steady_load(deployment.front, 4, stop)))
    )
    runner.start()
    try:
        time.sleep(3)
        killing = time.monotonic()
        deployment.kill("encoder-1")
        killed = time.monotonic()
        deployment.wait_servers("encoders", {"encoder-1": "DOWN"}, timeout_s=10)
        down = time.monotonic()
        time.sleep(5)
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive(), "the load hung"
    outcomes = load[0]
    counts = Counter(o.outcome for o in outcomes)
    in_flight = [o.started < killed and o.ended > killing for o in outcomes]
    print(
        f"{len(outcomes)} requests, {sum(in_flight)} in flight at the kill: {dict(counts)}; "
        f"encoder-1 marked down {down - killing:.1f} s after the kill"
    )
    assert set(counts) <= {"200", "503"}, counts  # 503s are checked for Retry-After and error
    lost = [o for o, was in zip(outcomes, in_flight, strict=True) if o.outcome != "200" and not was]
    assert not lost, lost
    assert sum(o.started > down for o in outcomes) > 0 and counts["200"] > sum(in_flight)


def test_a_job_whose_entry_is_killed_fails_on_the_other_replica(deployment):
    """The entry that accepted a job runs it; killed (SIGKILL), its lease runs out and the
    other replica reads the job as failed with an error that says to submit it again."""
    entry_1, entry_2 = (deployment.entries[n] for n in ENTRIES)
    job_id = _submit(entry_1, **LONG)
    _until(entry_2, job_id, ("running",), timeout_s=60)
    killed = time.monotonic()
    deployment.kill("entry-1")
    polls = Counter()
    while True:
        answer = httpx.get(f"{deployment.front}/jobs/{job_id}", timeout=30)
        polls[answer.status_code] += 1
        # The balancer hides the dead replica: no HAProxy 503 page, and a 502 only for a poll
        # the dying replica had taken (HAProxy resends only refused connections), which a
        # client polling a job sends again.
        if answer.status_code == 502 and polls[502] == 1 and time.monotonic() - killed < 2:
            continue
        assert answer.status_code == 200 or _retryable(answer), answer.text
        if answer.status_code == 200 and (status := answer.json())["status"] in FINISHED:
            break
        assert time.monotonic() - killed < 2 * LEASE_S, answer.text
        time.sleep(0.5)
    failed_after = time.monotonic() - killed
    print(f"failed {failed_after:.1f} s after the kill; polls through the balancer {polls}")
    assert status["status"] == "failed", status
    assert "submit it again" in status["error"], status
    assert httpx.get(f"{entry_2}/jobs/{job_id}", timeout=30).json() == status


def test_a_redis_restart_loses_no_finished_job(deployment):
    """Killed (SIGKILL) over a second after the job's result was written (appendfsync
    everysec), started again on its directory: the job and its result are served as before,
    and new jobs run. While Redis is down every job route is a 503 a client can retry, never
    a 500 or a hang. (Runs last: the replicas killed before it stay dead.)"""
    entries = [url for name, url in deployment.entries.items() if deployment.alive(name)]
    job_id = _submit(deployment.front, mode="fast")
    assert _until(deployment.front, job_id, FINISHED)["status"] == "succeeded"
    result = httpx.get(f"{deployment.front}/jobs/{job_id}/result", timeout=30).json()
    # Concurrent polls: each replica holds several connections to Redis when it goes.
    paths = [f"{url}/jobs/{job_id}{end}" for url in entries for end in ("", "/result")]
    assert {a.status_code for a in _concurrently(paths)} == {200}
    time.sleep(1.5)
    deployment.kill("redis")
    try:
        for url in (*entries, deployment.front):
            started = time.monotonic()
            answers = [
                httpx.get(f"{url}/jobs/{job_id}", timeout=30),
                httpx.get(f"{url}/jobs/{job_id}/result", timeout=30),
                httpx.delete(f"{url}/jobs/{job_id}", timeout=30),
                httpx.post(f"{url}/jobs/interrogate", json={"image": IMAGE}, timeout=30),
            ]
            for answer in answers:
                assert _retryable(answer), (answer.request.method, answer.url, answer.text)
            assert time.monotonic() - started < 20, url
    finally:
        deployment.restart("redis")
    deadline = time.monotonic() + 10
    while (answer := httpx.get(f"{deployment.front}/jobs/{job_id}", timeout=30)).status_code != 200:
        assert _retryable(answer) and time.monotonic() < deadline, answer.text
        time.sleep(0.2)
    # Back for good on every replica: concurrent polls reach each one's every connection
    # to Redis (one left over from before the restart would fail its next request).
    answers = _concurrently(paths)
    assert [a.status_code for a in answers] == [200] * len(answers), [
        a.text for a in answers if a.status_code != 200
    ]
    assert all(a.json() == result for a in answers if a.url.path.endswith("/result"))
    assert all(a.json()["status"] == "succeeded" for a in answers if "/result" not in a.url.path)
    for url in entries:
        new_job = _submit(url, mode="fast")
        assert _until(url, new_job, FINISHED)["status"] == "succeeded", url


def _concurrently(urls: list[str], width: int = 8) -> list[httpx.Response]:
    """GET each URL ``width`` times, ``width`` at a time."""
    with ThreadPoolExecutor(width) as pool:
        return list(pool.map(lambda url: httpx.get(url, timeout=30), urls * width))
