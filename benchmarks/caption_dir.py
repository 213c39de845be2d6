"""`clip-service caption-dir` against the server's own throughput on the same images.

One server; a folder of ``--images`` copies of one photo-like JPEG (so both sides caption
the same image). First the load generator (its own process, aiohttp, ``--concurrency``
clients back to back for ``--duration`` s after ``--warmup`` s) measures what the server
answers per second on ``/caption`` (or ``/interrogate`` with ``--mode``); then
``clip-service caption-dir FOLDER --url`` runs with the same concurrency, as a user runs
it, writing a ``.txt`` beside each image. Its rate is given end to end (the command's
start-up, its imports mostly, included) and steady (from the first ``.txt`` written to the
last, by their modification times). The goal (issue 20): caption-dir at 0.9x the server's
rate or better.

    python benchmarks/caption_dir.py --models /work/bench-models --images 1000

Without ``--models`` tiny random-weight models are generated (a check that the scenario
runs, not a measurement).
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

from harness import (
    Scenario,
    embedding_dim,
    fmt,
    load,
    make_jpeg,
    seed_label_cache,
    table,
    times,
    write,
)

from clip_service.testing.tiny_models import make_all

CLI = [sys.executable, "-m", "clip_service.cli.main", "caption-dir"]


def caption_dir_s(folder: Path, url: str, mode: str, concurrency: int) -> float:
    """Wall seconds of the command, as a user runs it (a fresh interpreter)."""
    command = [*CLI, str(folder), "--url", url, "--mode", mode, "--concurrency", str(concurrency)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    scenario = Scenario("caption_dir", __doc__, models=None)
    scenario.arg("--images", type=int, default=1000, help="images in the folder")
    scenario.arg("--concurrency", type=int, default=8, help="requests in flight, both sides")
    scenario.arg("--mode", default="caption", help="caption, or an interrogation mode")
    scenario.arg("--duration", type=float, default=60, help="load generator: measured s")
    scenario.arg("--warmup", type=float, default=10, help="load generator: unmeasured s")
    args = scenario.parse()
    work = scenario.work
    if args.models:
        models = {name: scenario.model_dir(name) for name in ("open-clip", "blip")}
    else:
        models = make_all(work / "models")
    clip_spec = f"local-dir:{models['open-clip']}"
    with scenario.step("label tables seeded"):  # random: only interrogation's cost matters
        seed_label_cache(work / "label-cache", clip_spec, embedding_dim(models["open-clip"]))
    jpeg = make_jpeg()
    folder = work / "images"
    folder.mkdir()
    for i in range(args.images):
        (folder / f"{i:06d}.jpg").write_bytes(jpeg)
    route = "/caption" if args.mode == "caption" else "/interrogate"
    body = {"image": {"img_blob": base64.b64encode(jpeg).decode()}}
    if args.mode != "caption":
        body["mode"] = args.mode
    settings = {
        "CLIP_MODEL": clip_spec,
        "CAPTION_MODEL": str(models["blip"]),
        "LABEL_CACHE_DIR": str(work / "label-cache"),
        "LABEL_TABLES_DOWNLOAD": "false",
        "JOBS_DB": str(work / "jobs.sqlite3"),
        "CUSTOM_TABLES_DIR": str(work / "label-lists"),
        **scenario.server_env(),
    }
    with scenario.serve("server", settings) as server:
        with scenario.step("load generator"):
            report = load(
                server.url + route, write(work / "body.json", body), "application/json",
                concurrency=args.concurrency, duration=args.duration, warmup=args.warmup,
            )  # fmt: skip
        if report["errors"]:
            raise SystemExit(f"the load generator got errors: {report['first_error']}")
        with scenario.step("caption-dir"):
            wall_s = caption_dir_s(folder, server.url, args.mode, args.concurrency)
    written = sorted(p.stat().st_mtime_ns for p in folder.glob("*.txt"))
    if len(written) != args.images:
        raise SystemExit(f"caption-dir wrote {len(written)} of {args.images} .txt files")
    server_rate = report["throughput"]
    end_to_end = args.images / wall_s
    span_s = (written[-1] - written[0]) / 1e9
    steady = (args.images - 1) / span_s if span_s > 0 else None
    rows = [
        ["server (load generator)", fmt(server_rate, 2), fmt(report["p50"]), "1.00x"],
        ["caption-dir, end to end", fmt(end_to_end, 2), "-", times(end_to_end, server_rate)],
        ["caption-dir, first to last file", fmt(steady, 2), "-", times(steady, server_rate)],
    ]
    lines = {
        "models": str(args.models or "tiny random-weight (clip_service.testing): no measurement"),
        "work": f"{args.images} copies of one {len(jpeg) // 1000} kB JPEG, {route} "
        f"({args.mode}), {args.concurrency} in flight on both sides",
        "caption-dir": f"{wall_s:.1f} s end to end, {span_s:.1f} s from its first file to its last",
        "load generator": f"{report['requests']} requests in {report['elapsed_s']:.0f} s "
        f"after a {args.warmup:g} s warm-up",
    }
    head = ["client", "images/s", "p50 ms", "of the server's rate"]
    scenario.write("caption-dir against the server's own throughput", lines, table(head, rows))


if __name__ == "__main__":
    main()
