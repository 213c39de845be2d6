"""Interrogation goodput past capacity: many best-mode requests at once, a deadline that bites.

Sends ``--clients`` best-mode ``/interrogate`` requests at the same moment to a server with
``REQUEST_TIMEOUT_S=--timeout``, and records what each got and when; then watches the
encoder's interrogation-priority batch counter for ``--idle-s`` after the last answer
(work it does then is for nobody). Run for this checkout and, with ``--before REV``, for
an earlier commit served from a temporary git worktree (same venv, models, settings), side
by side in one run:

    python benchmarks/interrogation_goodput.py --before fdf7511

Goodput: answers (200) within the deadline per minute of the burst. Without ``--models``
tiny random-weight models are generated; their best-mode prompt takes seconds, so 50 at
once are far past what the deadline allows, as a few dozen full-size ones on a CPU are.
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import httpx
from harness import REPO, Scenario, table

from clip_service.testing.images import image_bytes, make_image
from clip_service.testing.tiny_models import make_all

BATCHES = "clip_service_batch_size_count"  # the encoder's, at interrogation priority:
ENCODER = {"service": "ClipEncoder", "priority": "interrogation"}


async def burst(url: str, body: dict, clients: int, timeout_s: float) -> list[tuple[int, float]]:
    """(status, seconds) of ``clients`` requests sent at once."""
    limit = aiohttp.ClientTimeout(total=timeout_s + 120)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(timeout=limit, connector=connector) as session:

        async def one() -> tuple[int, float]:
            start = time.monotonic()
            async with session.post(f"{url}/interrogate", json=body) as response:
                await response.read()
                return response.status, time.monotonic() - start

        return await asyncio.gather(*(one() for _ in range(clients)))


@contextmanager
def checkout(rev: str | None) -> Iterator[Path]:
    """This repository, or ``rev`` checked out in a temporary worktree."""
    if rev is None:
        yield REPO
        return
    with tempfile.TemporaryDirectory(prefix="goodput-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "-q", str(tree), rev], cwd=REPO, check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO)


def measure(scenario: Scenario, name: str, tree: Path, models: dict[str, Path]) -> dict:
    args, work = scenario.args, scenario.work
    settings = {
        "CLIP_MODEL": f"local-dir:{models['open-clip']}",
        "CAPTION_MODEL": str(models["blip"]),
        "REQUEST_TIMEOUT_S": str(args.timeout),
        "LABEL_CACHE_DIR": str(work / "label-cache"),  # shared: built once, by the first
        "JOBS_DB": str(work / name / "jobs.sqlite3"),
        "CUSTOM_TABLES_DIR": str(work / name / "label-lists"),
        "SHUTDOWN_QUIET_S": "1",
        **scenario.server_env(),
    }
    image = {"img_blob": base64.b64encode(image_bytes(make_image(3, (160, 120)))).decode()}
    body = {"image": image, "mode": "best"}
    with scenario.serve(name, settings, cwd=tree) as server:
        server.wait_for_tables(600)
        warm = httpx.post(f"{server.url}/interrogate", json=body, timeout=args.timeout + 60)
        warm.raise_for_status()
        alone_s = warm.elapsed.total_seconds()
        start = time.monotonic()
        results = asyncio.run(burst(server.url, body, args.clients, args.timeout))
        wall_s = time.monotonic() - start
        at_last_answer = server.metric(BATCHES, **ENCODER)
        time.sleep(args.idle_s)
        after = server.metric(BATCHES, **ENCODER) - at_last_answer
    ok = [s for status, s in results if status == 200 and s <= args.timeout]
    refused = [s for status, s in results if status in (429, 503)]
    other = sorted({status for status, _ in results} - {200, 429, 503, 504})
    return {
        "alone_s": alone_s,
        "ok": f"{len(ok)} (p50 {seconds(statistics.median(ok) if ok else None)})",
        "goodput": f"{len(ok) / wall_s * 60:.1f}",
        "refused": f"{len(refused)} ({seconds(max(refused) if refused else None)})",
        "timed_out": sum(status == 504 for status, _ in results),
        "other": ", ".join(map(str, other)) or "-",
        "wall_s": wall_s,
        "after": f"{after:.0f}",
    }


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def main() -> None:
    scenario = Scenario("interrogation_goodput", __doc__, models=None)
    scenario.arg("--clients", type=int, default=50)
    scenario.arg("--timeout", type=float, default=30, help="REQUEST_TIMEOUT_S")
    scenario.arg("--idle-s", type=float, default=20, help="watch the encoder this long")
    scenario.arg("--before", help="an earlier commit to measure first")
    args = scenario.parse()
    if args.models:
        models = {name: scenario.model_dir(name) for name in ("open-clip", "blip")}
    else:
        models = make_all(scenario.work / "models")
    rows = []
    for rev in ([args.before] if args.before else []) + [None]:
        with checkout(rev) as tree:
            r = measure(scenario, "before" if rev else "this", tree, models)
            rows.append(
                [f"before ({rev})" if rev else "this code", seconds(r["alone_s"]), r["ok"],
                 r["goodput"], r["refused"], r["timed_out"], r["other"], seconds(r["wall_s"]),
                 r["after"]]
            )  # fmt: skip
    lines = {
        "models": str(args.models or "tiny random-weight (clip_service.testing)"),
        "load": f"{args.clients} best-mode /interrogate at once, "
        f"REQUEST_TIMEOUT_S={args.timeout:g}",
    }
    head = ["code", "one alone", "200 in time", "goodput /min", "refused (p100 wait)", "504"]
    head += ["other", "burst wall", f"encoder batches in {args.idle_s:g} s after the last answer"]
    scenario.write("Interrogation goodput past capacity", lines, table(head, rows))


if __name__ == "__main__":
    main()
