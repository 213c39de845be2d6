"""Soak test: sustained mixed traffic against a running server, every request accounted for.

``--clients`` aiohttp clients (64 by default, in this process, apart from the server) send
a mix of ``/encode`` (texts, images), ``/rank``, ``/classify`` and ``/interrogate``
(mode fast) for ``--warmup`` + ``--duration`` seconds. Each request has a client timeout and
ends in exactly one outcome: its HTTP status, ``timeout`` or the client error's name; a
request still running at the end is counted as ``hung``, and ``lost`` (sent, yet neither
answered nor hung) must be 0. 503 and 429 are back-pressure and
are accepted only with a ``Retry-After`` header (the client then waits that long).

Meanwhile the resident memory (RSS) of every process of the server (found by the port it
listens on: the arbiter and each service worker) is sampled; growth is reported from the end
of the warm-up to the end of the run, with a fitted slope in MiB per minute.

Exit status 0 only if nothing was lost, hung or timed out, every status was allowed, and
the growth stayed within ``--max-growth-mib`` (when given). ``--json`` writes the report.

    bentoml serve --port 3000 &
    python -m clip_service.testing.soak --url http://127.0.0.1:3000 --duration 600
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import numpy as np
import psutil
from PIL import Image

BACK_PRESSURE = {429, 503}
# (request kind, share of the traffic)
MIX = {"encode_texts": 30, "encode_images": 25, "rank": 20, "classify": 15, "interrogate": 10}
WORDS = ("cat", "dog", "car", "tree", "house", "river", "mountain", "city", "boat", "bird")


def _png(seed: int) -> str:
    rng = np.random.default_rng(seed)
    side = int(rng.integers(48, 128))
    pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


IMAGES = [_png(seed) for seed in range(8)]


def request_for(kind: str, rng: random.Random) -> tuple[str, Any]:
    """(path, JSON body) of one request of ``kind``."""
    image = {"img_blob": rng.choice(IMAGES)}
    texts = [f"a photo of a {rng.choice(WORDS)} {rng.randrange(10_000)}" for _ in range(4)]
    if kind == "encode_texts":
        return "/encode", [{"text": text} for text in texts[: rng.randint(1, 4)]]
    if kind == "encode_images":
        return "/encode", [image] * rng.randint(1, 2)
    if kind == "rank":
        return "/rank", {"queries": [image], "candidates": [{"text": t} for t in texts[:3]]}
    if kind == "classify":
        return "/classify", {"image": image, "labels": rng.sample(WORDS, 4)}
    return "/interrogate", {"image": image, "mode": "fast"}


@dataclass
class Tally:
    """Outcomes and latencies per request kind; ``in_flight`` is what has no outcome yet."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    in_flight: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    examples: dict[str, str] = field(default_factory=dict)

    def record(self, kind: str, outcome: str, seconds: float, detail: str = "") -> None:
        self.outcomes[kind, outcome] += 1
        self.latencies[kind].append(seconds)
        if outcome != "200":
            self.examples.setdefault(outcome, detail[:300])


async def one_request(
    session: aiohttp.ClientSession,
    tally: Tally,
    url: str,
    kind: str,
    rng: random.Random,
    timeout_s: float,
) -> float:
    """Send one request and record its outcome; returns the back-pressure wait asked for."""
    path, body = request_for(kind, rng)
    tally.sent += 1
    tally.in_flight[kind] += 1
    start = time.monotonic()
    wait, detail = 0.0, ""
    try:
        async with session.post(
            url + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            detail = (await response.read()).decode("utf-8", "replace")
            outcome = str(response.status)
            if response.status in BACK_PRESSURE:
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    wait = float(retry_after)
                else:
                    outcome += " without Retry-After"
    except TimeoutError:
        outcome = "timeout"
    except Exception as exc:  # every failure is an outcome; a cancelled request stays hung
        outcome, detail = type(exc).__name__, str(exc)
    tally.in_flight[kind] -= 1
    tally.record(kind, outcome, time.monotonic() - start, detail)
    return wait


async def client(
    session: aiohttp.ClientSession,
    tally: Tally,
    url: str,
    deadline: float,
    seed: int,
    timeout_s: float,
) -> None:
    rng = random.Random(seed)
    kinds, weights = list(MIX), list(MIX.values())
    while (left := deadline - time.monotonic()) > 0:
        kind = rng.choices(kinds, weights)[0]
        wait = await one_request(session, tally, url, kind, rng, timeout_s)
        await asyncio.sleep(min(wait, max(0.0, left)))


def server_processes(port: int) -> psutil.Process | None:
    """The root (circus arbiter) of the server listening on ``port``, if it runs here."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            process = psutil.Process(conn.pid)
            # The socket is shared with the workers, which the arbiter starts.
            if "_bentoml_impl.worker.service" in process.cmdline():
                process = process.parent()
            return process
    return None


def process_name(process: psutil.Process) -> str:
    """``ClipEncoder``, ``BlipCaptioner``, ``ClipApi``, ... from a worker's command line."""
    cmdline = process.cmdline()
    if "--service-name" in cmdline:
        return cmdline[cmdline.index("--service-name") + 1]
    return "arbiter" if "serve" in cmdline else Path(cmdline[0]).name if cmdline else "?"


def sample_rss(root: psutil.Process) -> dict[str, float]:
    """MiB of resident memory per process name, summed over that name's processes."""
    rss: dict[str, float] = defaultdict(float)
    for process in [root, *root.children(recursive=True)]:
        try:
            rss[process_name(process)] += process.memory_info().rss / 2**20
        except psutil.NoSuchProcess:  # a worker restarting
            continue
    return dict(rss)


async def sample_memory(
    root: psutil.Process, every_s: float, samples: list[tuple[float, dict[str, float]]]
) -> None:
    start = time.monotonic()
    while True:
        samples.append((time.monotonic() - start, await asyncio.to_thread(sample_rss, root)))
        await asyncio.sleep(every_s)


def memory_report(samples: list[tuple[float, dict[str, float]]], warmup_s: float) -> dict:
    """Per process name: RSS at the end of warm-up and at the end, max, growth, slope."""
    measured = [(t, rss) for t, rss in samples if t >= warmup_s] or samples[-1:]
    report = {}
    for name in sorted({n for _, rss in measured for n in rss}):
        points = [(t, rss[name]) for t, rss in measured if name in rss]
        times, values = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        slope = float(np.polyfit(times, values, 1)[0] * 60) if len(points) > 2 else 0.0
        report[name] = {
            "start_mib": round(values[0], 1),
            "end_mib": round(values[-1], 1),
            "max_mib": round(values.max(), 1),
            "growth_mib": round(values[-1] - values[0], 1),
            "slope_mib_per_min": round(slope, 2),
        }
    total = {k: sum(v[k] for v in report.values()) for k in ("start_mib", "end_mib")}
    report["total"] = {**total, "growth_mib": round(total["end_mib"] - total["start_mib"], 1)}
    return report


async def warm_up(url: str, timeout_s: float) -> None:
    """One request of each kind, in turn: the label tables are built, first calls done."""
    rng = random.Random(0)
    async with aiohttp.ClientSession() as session:
        for kind in MIX:
            path, body = request_for(kind, rng)
            timeout = aiohttp.ClientTimeout(total=timeout_s)
            async with session.post(url + path, json=body, timeout=timeout) as response:
                if response.status != 200:
                    raise SystemExit(f"warm-up {kind}: {response.status} {await response.text()}")


async def run_clients(
    url: str,
    args: argparse.Namespace,
    client: Callable[[aiohttp.ClientSession, float, int], Awaitable],
) -> tuple[float, list[tuple[float, dict[str, float]]]]:
    """``args.clients`` clients (``client(session, deadline, seed)``) until the warm-up and
    duration are over, while the server's memory is sampled: (elapsed seconds, samples).
    Every request ends by its own timeout; a client still running past that is hung."""
    root = server_processes(urlparse(url).port or 80)
    samples: list[tuple[float, dict[str, float]]] = []
    sampler = asyncio.create_task(sample_memory(root, args.sample_every, samples)) if root else None
    start = time.monotonic()
    deadline = start + args.warmup + args.duration
    connector = aiohttp.TCPConnector(limit=args.clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        clients = [
            asyncio.create_task(client(session, deadline, seed)) for seed in range(args.clients)
        ]
        _, pending = await asyncio.wait(
            clients, timeout=deadline - start + args.request_timeout + 5
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.monotonic() - start
    if sampler:
        sampler.cancel()
        samples.append((elapsed, sample_rss(root)))
    return elapsed, samples


def outcome_totals(by_kind: Counter[tuple[str, str]]) -> Counter[str]:
    """Counts per outcome, over every request kind."""
    totals: Counter[str] = Counter()
    for (_, outcome), count in by_kind.items():
        totals[outcome] += count
    return totals


def latency_summary(latencies: list[float]) -> dict[str, float]:
    return {f"p{q}_s": round(float(np.percentile(latencies, q)), 3) for q in (50, 99)}


async def soak(args: argparse.Namespace) -> dict:
    url = args.url.rstrip("/")
    await warm_up(url, args.warmup_timeout)
    tally = Tally()
    elapsed, samples = await run_clients(
        url,
        args,
        lambda session, deadline, seed: client(
            session, tally, url, deadline, seed, args.request_timeout
        ),
    )
    outcomes = outcome_totals(tally.outcomes)
    accounted = sum(outcomes.values())
    return {
        "url": url,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "sent": tally.sent,
        "accounted": accounted,
        "hung": sum(tally.in_flight.values()),
        "lost": tally.sent - accounted - sum(tally.in_flight.values()),
        "requests_per_s": round(accounted / elapsed, 1),
        "outcomes": dict(outcomes),
        "by_kind": {
            kind: {
                "outcomes": {o: n for (k, o), n in tally.outcomes.items() if k == kind},
                **latency_summary(tally.latencies[kind]),
            }
            for kind in MIX
            if tally.latencies[kind]
        },
        "examples": tally.examples,
        "memory": memory_report(samples, args.warmup) if samples else None,
    }


def problems(report: dict, max_growth_mib: float | None) -> list[str]:
    """What makes the run a failure (empty: it passed)."""
    found = [f"{report[key]} {key}" for key in ("lost", "hung") if report[key]]
    allowed = {"200", *map(str, BACK_PRESSURE)}
    found += [f"{n} x {o}" for o, n in report["outcomes"].items() if o not in allowed]
    if max_growth_mib is not None and report["memory"]:
        growth = report["memory"]["total"]["growth_mib"]
        if growth > max_growth_mib:
            found.append(f"memory grew {growth} MiB > {max_growth_mib} MiB")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=300, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=30, help="loaded seconds before it")
    parser.add_argument("--request-timeout", type=float, default=120)
    parser.add_argument("--warmup-timeout", type=float, default=900, help="first requests")
    parser.add_argument("--sample-every", type=float, default=2, help="memory, seconds")
    parser.add_argument("--max-growth-mib", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args()
    report = asyncio.run(soak(args))
    found = problems(report, args.max_growth_mib)
    report["problems"] = found
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
