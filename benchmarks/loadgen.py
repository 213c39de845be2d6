"""Closed-loop HTTP load generator, run as its own process so it never shares the server's
or the orchestrator's interpreter: N aiohttp clients each send the same POST back to back.

    python benchmarks/loadgen.py URL BODY_FILE --content-type T --concurrency N \
        --duration S [--warmup S]

Prints one JSON object: requests, errors (non-200 answers and failed connections), the
first error, elapsed seconds, throughput (completed 200s per second) and p50/p95/p99/max
latency in milliseconds. aiohttp produces real bursts on a small CPU (httpx did not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp
import numpy as np


async def client(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    deadline: float,
    latencies: list[float] | None,
    errors: list[str],
) -> None:
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                text = await response.read()
                ok = response.status == 200
                if not ok:
                    errors.append(f"HTTP {response.status}: {text[:200]!r}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok = False
            errors.append(f"{type(exc).__name__}: {exc}")
        if ok and latencies is not None:
            latencies.append(time.perf_counter() - start)


async def run(args: argparse.Namespace) -> dict[str, object]:
    body = args.body.read_bytes()
    headers = {"content-type": args.content_type}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if args.warmup > 0:
            deadline = time.perf_counter() + args.warmup
            warm_errors: list[str] = []
            await asyncio.gather(
                *(
                    client(session, args.url, body, headers, deadline, None, warm_errors)
                    for _ in range(args.concurrency)
                )
            )
        latencies: list[float] = []
        errors: list[str] = []
        start = time.perf_counter()
        deadline = start + args.duration
        await asyncio.gather(
            *(
                client(session, args.url, body, headers, deadline, latencies, errors)
                for _ in range(args.concurrency)
            )
        )
        elapsed = time.perf_counter() - start  # until the last request started in time ended
    ms = np.asarray(latencies) * 1000
    pct = {f"p{q}": float(np.percentile(ms, q)) if len(ms) else None for q in (50, 95, 99)}
    return {
        "concurrency": args.concurrency,
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "elapsed_s": elapsed,
        "throughput": len(latencies) / elapsed,
        **pct,
        "max": float(ms.max()) if len(ms) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("body", type=Path, help="file whose bytes are every request's body")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=0.0, help="unmeasured seconds first")
    parser.add_argument("--request-timeout", type=float, default=600.0)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
