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

import argparse
import asyncio
import base64
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (
    REPO,
    bentoml_command,
    bentoml_env,
    header,
    markdown_table,
    server_process,
    versions,
    wait_for_tables,
    write_results,
)
from clip_service.testing.tiny_models import make_all
from tests.conftest import free_port, image_bytes, make_image, metric_total


def interrogation_batches(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return metric_total(
        text, "clip_service_batch_size_count", service="ClipEncoder", priority="interrogation"
    )


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


def measure(name: str, tree: Path, models: dict[str, Path], args, work: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = {
        "CLIP_MODEL": f"local-dir:{models['open-clip']}",
        "CAPTION_MODEL": str(models["blip"]),
        "REQUEST_TIMEOUT_S": str(args.timeout),
        "LABEL_CACHE_DIR": str(work / "label-cache"),  # shared: built once, by the first
        "JOBS_DB": str(work / name / "jobs.sqlite3"),
        "CUSTOM_TABLES_DIR": str(work / name / "label-lists"),
        "SHUTDOWN_QUIET_S": "1",
    }
    env = bentoml_env(work / name / "bentoml", settings)
    image = {"img_blob": base64.b64encode(image_bytes(make_image(3, (160, 120)))).decode()}
    body = {"image": image, "mode": "best"}
    with server_process(name, bentoml_command(port), f"{url}/readyz", work, env=env, cwd=tree):
        wait_for_tables(url, 600)
        warm = httpx.post(f"{url}/interrogate", json=body, timeout=args.timeout + 60)
        warm.raise_for_status()
        alone_s = warm.elapsed.total_seconds()
        start = time.monotonic()
        results = asyncio.run(burst(url, body, args.clients, args.timeout))
        wall_s = time.monotonic() - start
        at_last_answer = interrogation_batches(url)
        time.sleep(args.idle_s)
        after = interrogation_batches(url) - at_last_answer
    ok = [s for status, s in results if status == 200 and s <= args.timeout]
    refused = [s for status, s in results if status in (429, 503)]
    timed_out = [s for status, s in results if status == 504]
    other = sorted({status for status, _ in results} - {200, 429, 503, 504})
    return {
        "code": name,
        "alone_s": alone_s,
        "ok": len(ok),
        "goodput": len(ok) / wall_s * 60,
        "refused": len(refused),
        "refused_p99": max(refused) if refused else None,
        "timed_out": len(timed_out),
        "other": other,
        "ok_p50": statistics.median(ok) if ok else None,
        "wall_s": wall_s,
        "after": after,
    }


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, help="dir with open-clip/ and blip/")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=30, help="REQUEST_TIMEOUT_S")
    parser.add_argument("--idle-s", type=float, default=20, help="watch the encoder this long")
    parser.add_argument("--before", help="an earlier commit to measure first")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="goodput-") as tmp:
        work = Path(tmp)
        models = (
            {"open-clip": args.models / "open-clip", "blip": args.models / "blip"}
            if args.models
            else make_all(work / "models")
        )
        rows = []
        for rev in ([args.before] if args.before else []) + [None]:
            with checkout(rev) as tree:
                name = f"before ({rev})" if rev else "this code"
                rows.append(measure(name.split()[0], tree, models, args, work) | {"code": name})
    head = header(
        "Interrogation goodput past capacity",
        {
            "models": str(args.models or "tiny random-weight (clip_service.testing)"),
            "load": f"{args.clients} best-mode /interrogate at once, "
            f"REQUEST_TIMEOUT_S={args.timeout:g}",
            "versions": versions(),
        },
    )
    table = markdown_table(
        [
            "code",
            "one alone",
            "200 in time",
            "goodput /min",
            "refused (p100 wait)",
            "504",
            "other",
            "burst wall",
            f"encoder batches in {args.idle_s:g} s after the last answer",
        ],
        [
            [
                r["code"],
                seconds(r["alone_s"]),
                f"{r['ok']} (p50 {seconds(r['ok_p50'])})",
                f"{r['goodput']:.1f}",
                f"{r['refused']} ({seconds(r['refused_p99'])})",
                r["timed_out"],
                ", ".join(map(str, r["other"])) or "-",
                seconds(r["wall_s"]),
                f"{r['after']:.0f}",
            ]
            for r in rows
        ],
    )
    write_results("interrogation_goodput", head + "\n" + table, args.out)


if __name__ == "__main__":
    main()
