"""Served /vectorize throughput at 1 and 2 entry workers (ENTRY_WORKERS), in one run.

The entry service decodes and preprocesses every image; with one worker that runs on one
core whatever the machine has. Each worker count gets a fresh server on the full-size
model (CLIP only: no captioner, no label tables), then closed-loop clients POST the same
JPEG to /vectorize from a load generator in its own process; the rounds are repeated,
alternating, so drift on a shared machine hits both counts alike.

    python benchmarks/entry_workers.py --models /work/bench-models
"""

from __future__ import annotations

import statistics

from harness import Scenario, load, make_jpeg, table, write


def measure(scenario: Scenario, workers: int, settings: dict[str, str]) -> dict:
    args, jpeg = scenario.args, scenario.work / "image.jpg"
    name = f"entry-workers-{workers}"
    with scenario.serve(name, {**settings, "ENTRY_WORKERS": str(workers)}) as server:
        report = load(
            f"{server.url}/vectorize", jpeg, "image/jpeg",
            concurrency=args.clients, warmup=args.warmup, duration=args.duration,
        )  # fmt: skip
        report["model"] = server.get("/model").text.strip()
    assert report["errors"] == 0 and report["statuses"] == {"200": report["requests"]}, report
    return report


def main() -> None:
    scenario = Scenario("entry_workers", __doc__)
    scenario.arg("--clients", type=int, default=32)
    scenario.arg("--duration", type=float, default=20, help="measured seconds")
    scenario.arg("--warmup", type=float, default=8, help="unmeasured seconds")
    scenario.arg("--rounds", type=int, default=2, help="per worker count, alternating")
    args = scenario.parse()
    write(scenario.work / "image.jpg", make_jpeg())
    settings = {"CLIP_MODEL": str(scenario.model_dir("hf-clip")), "CAPTION_MODEL": "none"}
    settings |= scenario.server_env()
    reports: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for workers, runs in reports.items():
            runs.append(measure(scenario, workers, settings))
            print(workers, "workers:", f"{runs[-1]['throughput']:.1f} img/s", flush=True)

    rows, medians = [], {}
    for workers, runs in reports.items():
        medians[workers] = statistics.median(r["throughput"] for r in runs)
        p50, p99 = (statistics.median(r[p] for r in runs) for p in ("p50", "p99"))
        each = ", ".join(f"{r['throughput']:.1f}" for r in runs)
        rows.append([workers, f"{medians[workers]:.1f}", each, f"{p50:.0f}", f"{p99:.0f}"])
    lines = {
        "model": f"{settings['CLIP_MODEL']} (ViT-B-32, random weights), CAPTION_MODEL=none",
        "load": f"{args.clients} closed-loop clients POST a 320x240 JPEG to /vectorize, "
        f"{args.warmup:g} s warm-up, {args.duration:g} s measured, {args.rounds} rounds per "
        "worker count, alternating, a fresh server each",
        "served model": f"`{reports[1][0]['model']}`",
    }
    head = ["ENTRY_WORKERS", "img/s (median)", "img/s per round", "p50 ms", "p99 ms"]
    scenario.write(
        "Entry workers: served /vectorize at 1 and 2 entry workers",
        lines,
        table(head, rows),
        f"2 workers / 1 worker: **{medians[2] / medians[1]:.2f}x**.\n",
    )


if __name__ == "__main__":
    main()
