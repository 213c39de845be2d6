"""Closed-loop HTTP load generator, run as its own process so it never shares the server's
or the orchestrator's interpreter: N aiohttp clients each send the same POST back to back.

    python benchmarks/loadgen.py URL BODY_FILE --content-type T --concurrency N \
        (--duration S [--warmup S] | --requests R) [--wait-ready READY_URL]

``--requests R``: each client sends R requests and stops (R=1 with N clients is a burst of
N requests sent at once; N=1 is a sequential probe). ``--wait-ready``: first poll READY_URL
(every 20 ms, connection errors included) and start the moment it answers 200, so a burst
lands right after a server turns ready.

Prints one JSON object: requests, errors (non-200 answers and failed connections), the
count per status, the first error, elapsed seconds, throughput (completed 200s per second)
and p50/p95/p99/max latency in milliseconds of the 200s. aiohttp produces real bursts on a
small CPU (httpx did not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np


@dataclass
class Tally:
    """Outcomes of the measured requests."""

    latencies: list[float] = field(default_factory=list)  # seconds, 200s only
    errors: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)


async def wait_ready(session: aiohttp.ClientSession, url: str, timeout_s: float) -> float:
    """Seconds until ``url`` first answered 200 (polled every 20 ms)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.02)
    raise SystemExit(f"{url} did not answer 200 within {timeout_s:.0f} s")


async def run(args: argparse.Namespace) -> dict[str, object]:
    body = args.body.read_bytes()
    headers = {"content-type": args.content_type}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    count = math.inf if args.requests is None else args.requests
    report: dict[str, object] = {}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(deadline: float, tally: Tally) -> None:
            """Send the body back to back until ``deadline`` or ``count`` requests."""
            sent = 0
            while time.perf_counter() < deadline and sent < count:
                sent += 1
                start = time.perf_counter()
                try:
                    async with session.post(args.url, data=body, headers=headers) as response:
                        text = await response.read()
                        tally.statuses[str(response.status)] += 1
                        if response.status == 200:
                            tally.latencies.append(time.perf_counter() - start)
                        else:
                            tally.errors.append(f"HTTP {response.status}: {text[:200]!r}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    tally.statuses[type(exc).__name__] += 1
                    tally.errors.append(f"{type(exc).__name__}: {exc}")

        async def clients(deadline: float, tally: Tally) -> None:
            await asyncio.gather(*(client(deadline, tally) for _ in range(args.concurrency)))

        if args.wait_ready:
            report["ready_wait_s"] = await wait_ready(session, args.wait_ready, args.ready_timeout)
        if args.warmup > 0:
            await clients(time.perf_counter() + args.warmup, Tally())
        tally, start = Tally(), time.perf_counter()
        await clients(math.inf if args.requests is not None else start + args.duration, tally)
        elapsed = time.perf_counter() - start  # until the last request started in time ended
    latencies, errors = tally.latencies, tally.errors
    ms = np.asarray(latencies) * 1000
    pct = {f"p{q}": float(np.percentile(ms, q)) if len(ms) else None for q in (50, 95, 99)}
    return {
        "concurrency": args.concurrency,
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "statuses": dict(tally.statuses),
        "first_error": errors[0] if errors else None,
        "elapsed_s": elapsed,
        "throughput": len(latencies) / elapsed,
        **pct,
        "max": float(ms.max()) if len(ms) else None,
        **report,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("body", type=Path, help="file whose bytes are every request's body")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=0.0, help="unmeasured seconds first")
    parser.add_argument("--requests", type=int, help="per client, instead of --duration")
    parser.add_argument("--wait-ready", metavar="URL", help="start once URL answers 200")
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    parser.add_argument("--request-timeout", type=float, default=600.0)
    args = parser.parse_args()
    if args.requests is not None and args.warmup > 0:
        parser.error("--warmup goes with --duration, not --requests")
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
