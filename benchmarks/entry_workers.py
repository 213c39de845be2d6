"""Served /vectorize throughput at 1 and 2 entry workers (ENTRY_WORKERS), in one run.

The entry service decodes and preprocesses every image; with one worker that runs on one
core whatever the machine has. Each worker count gets a fresh server on the full-size
model (CLIP only: no captioner, no label tables), then closed-loop clients POST the same
JPEG to /vectorize from a load generator in its own process; the rounds are repeated,
alternating, so drift on a shared machine hits both counts alike.

    python benchmarks/entry_workers.py --models /work/bench-models
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (
    bentoml_command,
    bentoml_env,
    header,
    markdown_table,
    model_answer,
    run_loadgen,
    server_process,
    versions,
    write_results,
)
from benchmarks.serving_throughput import make_jpeg
from tests.conftest import free_port


def measure(workers: int, settings: dict[str, str], jpeg: Path, args, work: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = bentoml_env(work / f"home-{workers}", {**settings, "ENTRY_WORKERS": str(workers)})
    with server_process(
        f"entry-workers-{workers}", bentoml_command(port), f"{url}/readyz", work, env=env
    ):
        options = ["--concurrency", str(args.clients), "--warmup", str(args.warmup)]
        report = run_loadgen(
            f"{url}/vectorize", jpeg, "image/jpeg", *options, "--duration", str(args.duration)
        )
        report["model"] = model_answer(url)
    assert report["errors"] == 0 and report["statuses"] == {"200": report["requests"]}, report
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("/work/bench-models"))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=8, help="unmeasured seconds")
    parser.add_argument("--rounds", type=int, default=2, help="per worker count, alternating")
    parser.add_argument("--out", type=Path, help="default benchmarks/results/entry_workers.md")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-entry-workers-"))
    jpeg = work / "image.jpg"
    make_jpeg(jpeg)
    settings = {"CLIP_MODEL": str((args.models / "hf-clip").resolve()), "CAPTION_MODEL": "none"}
    reports: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for workers in reports:
            reports[workers].append(measure(workers, settings, jpeg, args, work))
            print(workers, "workers:", f"{reports[workers][-1]['throughput']:.1f} img/s")

    rows, medians = [], {}
    for workers, runs in reports.items():
        medians[workers] = statistics.median(r["throughput"] for r in runs)
        p50 = statistics.median(r["p50"] for r in runs)
        p99 = statistics.median(r["p99"] for r in runs)
        each = ", ".join(f"{r['throughput']:.1f}" for r in runs)
        rows.append([workers, f"{medians[workers]:.1f}", each, f"{p50:.0f}", f"{p99:.0f}"])
    lines = {
        "versions": versions(),
        "model": f"{settings['CLIP_MODEL']} (ViT-B-32, random weights), CAPTION_MODEL=none",
        "load": f"{args.clients} closed-loop clients POST a 320x240 JPEG to /vectorize, "
        f"{args.warmup:g} s warm-up, {args.duration:g} s measured, {args.rounds} rounds per "
        "worker count, alternating, a fresh server each",
        "served model": f"`{reports[1][0]['model']}`",
    }
    ratio = medians[2] / medians[1]
    text = (
        header("Entry workers: served /vectorize at 1 and 2 entry workers", lines)
        + "\n"
        + markdown_table(
            ["ENTRY_WORKERS", "img/s (median)", "img/s per round", "p50 ms", "p99 ms"], rows
        )
        + f"\n2 workers / 1 worker: **{ratio:.2f}x**.\n"
    )
    write_results("entry_workers", text, args.out)


if __name__ == "__main__":
    main()
