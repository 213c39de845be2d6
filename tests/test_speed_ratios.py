"""Speeds the service relies on, as ratios to a reference measured beside them (the full
tier: timing never runs in the fast tier, and a lone absolute time means little on a
shared machine).

The body-depth guard reads every JSON body before BentoML parses it, so it must cost less
than the parse it protects; a byte-by-byte scanner would cost about a hundred times more.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from clip_service.inputs.json_depth import exceeds_depth

pytestmark = pytest.mark.served


def best_of(run: Callable[[], object], rounds: int = 5) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return min(timings)


def test_the_depth_guard_costs_less_than_parsing_the_body():
    flat = json.dumps([{"text": "[x] {y}"} for _ in range(200_000)]).encode()  # ~4 MB
    parse = best_of(lambda: json.loads(flat))
    scan = best_of(lambda: exceeds_depth(flat, 32))
    deep = best_of(lambda: exceeds_depth(b"[" * 100_000, 32))
    print(f"4 MB: parse {parse * 1e3:.0f} ms, scan {scan * 1e3:.0f} ms; deep {deep * 1e3:.1f} ms")
    assert scan < 2 * parse
    assert deep < parse / 4  # a 100 KB deep body: one slice, far less than a 4 MB parse
