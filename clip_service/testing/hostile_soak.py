"""Hostile-load soak: many concurrent clients, a share of them hostile, against a running server.

``--clients`` aiohttp clients (200 by default) send, for ``--warmup`` + ``--duration``
seconds, requests drawn from clip_service/testing/hostile_corpus.py: good ones of every kind
(``/encode`` texts and images, base64 wrapped as ``base64`` writes it, ``/rank``,
``/classify``, ``/vectorize`` raw and as a form, ``/embeddings``, ``/v1/embeddings``,
``/tag`` with a 300-character file name) and, with probability ``--bad-share`` (a fifth),
bad ones (hostile images through every image route, templates, malformed forms, forms
on ``/v1/embeddings``, ...).

Before the load, each good request is sent alone and its answer kept. Under load:

* every good request must get a 200 whose vectors have a cosine of at least
  ``--min-cosine`` (0.9999) with the answer it got alone (batching with others, hostile
  or not, must not change it);
* every bad request must get exactly the 4xx it gets alone, in the one error shape;
* no 5xx, no client error or timeout, nothing hung or lost;
* the RSS of every server process (arbiter and workers) is sampled; the total growth
  from the end of the warm-up to the end must stay under ``--max-growth-mib``.

Exit status 0 only if all of that held; ``--json`` writes the report.

    bentoml serve --port 3000 &
    python -m clip_service.testing.hostile_soak --url http://127.0.0.1:3000 --duration 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from clip_service.testing.hostile_corpus import (
    Request,
    bad_requests,
    cosine,
    error_message,
    good_requests,
)
from clip_service.testing.soak import (
    latency_summary,
    memory_report,
    outcome_totals,
    run_clients,
)


@dataclass
class Tally:
    """Outcome per request kind; ``problems`` keeps one example per kind of failure."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    in_flight: int = 0
    sent: int = 0
    min_cosine: float = 1.0
    problems: dict[str, str] = field(default_factory=dict)

    def record(self, kind: str, outcome: str, seconds: float, detail: str = "") -> None:
        self.outcomes[kind, outcome] += 1
        self.latencies[kind].append(seconds)
        if outcome not in ("200", "refused as alone"):
            self.problems.setdefault(f"{kind}: {outcome}", detail[:300])


def kind_of(request: Request) -> str:
    """``good /encode`` or ``bad /tag``: what the report groups by."""
    return f"{'good' if request.status == 200 else 'bad'} {request.path}"


async def send(
    session: aiohttp.ClientSession, url: str, request: Request, timeout_s: float
) -> tuple[int, bytes]:
    async with session.post(
        url + request.path,
        data=request.body,
        headers=request.headers,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as response:
        return response.status, await response.read()


async def references(url: str, good: list[Request], timeout_s: float) -> dict[str, Any]:
    """Each good request's answer when it is sent alone."""
    answers = {}
    async with aiohttp.ClientSession() as session:
        for request in good:
            status, body = await send(session, url, request, timeout_s)
            if status != 200:
                raise SystemExit(f"{request.name} alone: {status} {body[:300]!r}")
            answers[request.name] = json.loads(body)
    return answers


def judge(
    request: Request, status: int, body: bytes, alone: Any, tally: Tally, min_cosine: float
) -> str:
    """The outcome of one answer under load (``200`` or ``refused as alone`` are good)."""
    if request.status != 200:
        if status != request.status:
            return f"{status} (alone: {request.status})"
        error = error_message(json.loads(body), request.path) or ""
        return "refused as alone" if ": " in error else f"{status} without the error shape"
    if status != 200:
        return str(status)
    if request.vectors is not None:
        similarity = cosine(request.vectors(json.loads(body)), request.vectors(alone))
        tally.min_cosine = min(tally.min_cosine, similarity)
        if similarity < min_cosine:
            return f"200, but cosine {similarity:.6f} to the answer alone"
    return "200"


async def client(
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
    corpus: tuple[list[Request], list[Request]],
    answers: dict[str, Any],
    tally: Tally,
    deadline: float,
    seed: int,
) -> None:
    rng = random.Random(seed)
    good, bad = corpus
    while time.monotonic() < deadline:
        request = rng.choice(bad if rng.random() < args.bad_share else good)
        kind = kind_of(request)
        tally.sent += 1
        tally.in_flight += 1
        started, detail = time.monotonic(), ""
        try:
            status, body = await send(session, args.url, request, args.request_timeout)
            detail = f"{request.name}: {body[:200]!r}"
            alone = answers.get(request.name)
            outcome = judge(request, status, body, alone, tally, args.min_cosine)
        except TimeoutError:
            outcome = "timeout"
        except Exception as exc:  # every failure is an outcome
            outcome, detail = type(exc).__name__, f"{request.name}: {exc}"
        tally.in_flight -= 1
        tally.record(kind, outcome, time.monotonic() - started, detail)


async def soak(args: argparse.Namespace) -> dict:
    url = args.url
    good, bad = good_requests(), bad_requests()
    answers = await references(url, good, args.warmup_timeout)
    tally = Tally()
    elapsed, samples = await run_clients(
        url,
        args,
        lambda session, deadline, seed: client(
            session, args, (good, bad), answers, tally, deadline, seed
        ),
    )
    outcomes = outcome_totals(tally.outcomes)
    accounted = sum(outcomes.values())
    return {
        "url": url,
        "clients": args.clients,
        "bad_share": args.bad_share,
        "corpus": {"good": len(good), "bad": len(bad)},
        "seconds": round(elapsed, 1),
        "sent": tally.sent,
        "accounted": accounted,
        "hung": tally.in_flight,
        "lost": tally.sent - accounted - tally.in_flight,
        "requests_per_s": round(accounted / elapsed, 1),
        "outcomes": dict(outcomes),
        "min_cosine": round(tally.min_cosine, 7),
        "by_kind": {
            kind: {
                "outcomes": {o: n for (k, o), n in tally.outcomes.items() if k == kind},
                **latency_summary(tally.latencies[kind]),
            }
            for kind in sorted(tally.latencies)
        },
        "problems": tally.problems,
        "memory": memory_report(samples, args.warmup) if samples else None,
    }


def failures(report: dict, max_growth_mib: float | None) -> list[str]:
    """What makes the run a failure (empty: it passed)."""
    found = [f"{report[key]} {key}" for key in ("lost", "hung") if report[key]]
    found += [
        f"{n} x {o}" for o, n in report["outcomes"].items() if o not in ("200", "refused as alone")
    ]
    memory = report["memory"]
    if max_growth_mib is not None and memory:
        growth = memory["total"]["growth_mib"]
        if growth > max_growth_mib:
            found.append(f"memory grew {growth} MiB > {max_growth_mib} MiB")
    return found


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--bad-share", type=float, default=0.2)
    parser.add_argument("--duration", type=float, default=300, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=30, help="loaded seconds before it")
    parser.add_argument("--min-cosine", type=float, default=0.9999)
    parser.add_argument("--request-timeout", type=float, default=120)
    parser.add_argument("--warmup-timeout", type=float, default=600, help="first requests")
    parser.add_argument("--sample-every", type=float, default=2, help="memory, seconds")
    parser.add_argument("--max-growth-mib", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    args.url = args.url.rstrip("/")
    report = asyncio.run(soak(args))
    report["failures"] = failures(report, args.max_growth_mib)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    sys.exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main()
