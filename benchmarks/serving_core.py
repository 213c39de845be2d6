"""The serving core's goals (issue 11), side by side in one run: a fresh server's first
burst, one text beside bulk work, the served ceiling, and the memory each part costs.

Steps, one server at a time (started, measured, stopped: its own process group only); all
load comes from ``benchmarks/loadgen.py`` in its own process:

1. in process, no server running: the served model code (``common.production_encoder``)
   for one text at a time (latency), and ``serving_throughput.ceiling``'s model loop (best
   batch of preprocessed pixels);
2. fresh server, empty ``LABEL_CACHE_DIR`` (its label tables start building at start-up):
   64 ``/vectorize`` sent at once the moment ``/readyz`` answers 200, then one-text
   ``/encode`` requests one after another while the tables build;
3. quiet server, the same tables pre-seeded (``common.seed_label_cache``): the same burst;
   the common traffic (below); then 4 best-mode ``/interrogate`` running while one-text
   requests are timed; the resident memory (RSS) of each service;
4. CLIP-only server (``CAPTION_MODEL=none``): the same burst and common traffic, then the
   RSS of each service, so the difference to step 3 is what interrogation costs in memory.

Common traffic: one-text requests one after another (quiet latency), ``/vectorize`` at 32
clients (closed loop), 640 one-text ``/encode`` from 64 clients (10 each), then one-text
requests one after another at once and again ``--later-s`` later.

    python benchmarks/serving_core.py [--models /work/bench-models] [--max-flavors 2] \
        [--server-env KEY=VAL ...] [--out FILE]

``--models`` holds ``hf-clip/`` and ``blip/`` (``benchmarks/full_size_models.py``, or
``python -m clip_service.testing.tiny_models DIR`` for a quick smoke run).
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (
    bentoml_command,
    bentoml_env,
    header,
    loadgen_command,
    loadgen_report,
    markdown_table,
    parse_env,
    production_encoder,
    run_loadgen,
    seed_label_cache,
    server_process,
    tables_built_in_log,
    versions,
    write_results,
)
from benchmarks.serving_throughput import TEXT, ceiling, embedding_dim, make_jpeg
from clip_service.interrogation.labels import read_label_tables
from clip_service.testing.soak import sample_rss, server_processes
from tests.conftest import free_port, metric_total

SERVICES = ("ClipApi", "ClipEncoder", "BlipCaptioner")


@dataclass(frozen=True)
class Payloads:
    """Request bodies on disk, for the load generator."""

    jpeg: Path  # raw body of /vectorize
    text: Path  # /encode with one text
    interrogate: Path  # /interrogate, mode best


@dataclass(frozen=True)
class Row:
    """One measured case of the details table (a load generator report, maybe a "note")."""

    server: str
    case: str
    report: dict[str, Any]


class Run:
    """What one run measured: the details table's rows, and notes for the header."""

    def __init__(self, args: argparse.Namespace, payloads: Payloads) -> None:
        self.args, self.payloads = args, payloads
        self.rows: list[Row] = []
        self.notes: dict[str, str] = {}

    def add(self, server: str, case: str, report: dict[str, Any]) -> dict:
        """Record (and print) one load generator report; returns it."""
        self.rows.append(Row(server, case, report))
        p50 = report.get("p50")
        print(
            f"{server}: {case}: {ok(report)} of {report['requests']} ok, "
            f"{report['throughput']:.1f}/s, p50 {fmt(p50)} ms, p99 {fmt(report.get('p99'))} ms",
            flush=True,
        )
        return report

    def probe(self, server: str, url: str, case: str, n: int) -> dict:
        """``n`` one-text ``/encode`` requests, one after another."""
        options = ("--concurrency", "1", "--requests", str(n))
        report = run_loadgen(f"{url}/encode", self.payloads.text, "application/json", *options)
        return self.add(server, case, report)

    def common_traffic(self, server: str, url: str) -> dict[str, dict]:
        """Quiet one-text latency, /vectorize at 32 clients, one text after a 64-client burst."""
        args, p = self.args, self.payloads
        out = {"quiet": self.probe(server, url, "one text, quiet", args.p99_requests)}
        options = ("--concurrency", str(args.clients), "--warmup", str(args.warmup))
        report = run_loadgen(
            f"{url}/vectorize", p.jpeg, "image/jpeg", *options, "--duration", str(args.duration)
        )
        out["vectorize"] = self.add(server, f"/vectorize, {args.clients} clients", report)
        options = ("--concurrency", str(args.burst), "--requests", str(args.burst_texts))
        report = run_loadgen(f"{url}/encode", p.text, "application/json", *options)
        case = f"{args.burst * args.burst_texts} one-text /encode from {args.burst} clients"
        self.add(server, case, report)
        out["after burst"] = self.probe(
            server, url, "one text, right after that burst", args.probe_requests
        )
        time.sleep(args.later_s)
        out["later"] = self.probe(
            server, url, f"one text, {args.later_s:g} s after that", args.probe_requests
        )
        return out


def ok(report: dict[str, Any]) -> int:
    return report["requests"] - report["errors"]


def fmt(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def write_payloads(work: Path, jpeg: bytes, max_flavors: int) -> Payloads:
    (work / "image.jpg").write_bytes(jpeg)
    (work / "text.json").write_text(json.dumps([{"text": TEXT}]))
    image = {"img_blob": base64.b64encode(jpeg).decode()}
    body = {"image": image, "mode": "best", "max_flavors": max_flavors}
    (work / "interrogate.json").write_text(json.dumps(body))
    return Payloads(work / "image.jpg", work / "text.json", work / "interrogate.json")


def in_process_latency(call: Callable[[], object], n: int) -> dict[str, float]:
    """Latency percentiles (ms) of ``call()`` (the model for one item), after a warm-up."""
    for _ in range(5):
        call()
    ms = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        ms.append((time.perf_counter() - start) * 1000)
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def in_process(
    settings: dict[str, str], jpeg: bytes, args: argparse.Namespace
) -> tuple[dict[str, float], dict[str, float]]:
    """The served model code in this process: one-text latency, and the model loop's best
    throughputs (``serving_throughput.ceiling``)."""
    model = production_encoder(settings)
    one_text = in_process_latency(lambda: model.encode_texts([TEXT]), args.p99_requests)
    print(f"in process: one text p50 {one_text['p50']:.1f} ms", flush=True)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    return one_text, ceiling(model, jpeg, sizes, args.ceiling_seconds)[1]


@contextmanager
def served(
    name: str, settings: dict[str, str], work: Path, run: Run
) -> Iterator[tuple[str, dict[str, Any], Path]]:
    """Start a server with a burst of ``--burst`` ``/vectorize`` waiting in another process
    for its ``/readyz`` to answer 200; yield (URL, the burst's report, the server log)."""
    args = run.args
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    options = ("--concurrency", str(args.burst), "--requests", "1", "--wait-ready", f"{url}/readyz")
    burst = subprocess.Popen(
        loadgen_command(f"{url}/vectorize", run.payloads.jpeg, "image/jpeg", *options),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        env = bentoml_env(work / f"bentoml-{name}", settings)
        command = bentoml_command(port)
        with server_process(
            name, command, f"{url}/readyz", work, env=env, timeout_s=args.start_timeout
        ) as log:
            stdout, _ = burst.communicate(timeout=args.start_timeout)
            if burst.returncode:
                raise RuntimeError(f"the burst's load generator exited with {burst.returncode}")
            case = f"{args.burst} /vectorize at once, right after /readyz"
            yield url, run.add(name, case, loadgen_report(stdout)), log
    finally:
        if burst.poll() is None:
            burst.kill()
            burst.wait()


def model_json(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/model", timeout=30)
    response.raise_for_status()
    return response.json()


def tables_state(url: str) -> str:
    """E.g. ``building, 2,048 of 111,908 labels embedded (2%)``; ``none`` for CLIP only."""
    interrogation = model_json(url)["interrogation"]
    if interrogation is None:
        return "none"
    tables = interrogation["label_tables"]
    return f"{tables['state']}, {tables['progress']}"


def bulk_work(url: str, priority: str) -> tuple[float, float, float]:
    """(batches, items, model seconds) the ClipEncoder has run at ``priority`` so far."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    labels = {"service": "ClipEncoder", "priority": priority}
    return (
        metric_total(text, "clip_service_batch_size_count", **labels),
        metric_total(text, "clip_service_batch_size_sum", **labels),
        metric_total(text, "clip_service_batch_duration_seconds_sum", **labels),
    )


def bulk_note(before: tuple[float, ...], after: tuple[float, ...], priority: str) -> str:
    """What the encoder ran at ``priority`` between two :func:`bulk_work` readings."""
    batches, items, seconds = (b - a for a, b in zip(before, after, strict=True))
    per_batch = f", {items / batches:.1f} per batch" if batches else ""
    return (
        f"meanwhile the encoder ran {batches:.0f} {priority} batches ({items:.0f} texts"
        f"{per_batch}, {seconds:.1f} s of model time)"
    )


def rss_by_service(url: str) -> dict[str, float]:
    """MiB resident per service of the server listening on ``url``'s port."""
    port = int(url.rsplit(":", 1)[1])
    root = server_processes(port)
    if root is None:
        raise RuntimeError(f"no server process listens on port {port}")
    return sample_rss(root)


def interrogating(run: Run, server: str, url: str) -> tuple[dict, str]:
    """One-text probe while ``--interrogations`` best-mode interrogations run: (its report,
    a line on the interrogations: still running when it ended? their answers)."""
    args = run.args
    options = ("--concurrency", str(args.interrogations), "--requests", "1")
    load = subprocess.Popen(
        loadgen_command(
            f"{url}/interrogate", run.payloads.interrogate, "application/json", *options
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(args.interrogation_warmup)  # captions made, chains under way
        case = f"one text, {args.interrogations} best-mode interrogations running"
        before = bulk_work(url, "interrogation")
        probe = run.probe(server, url, case, args.p99_requests)
        still_running = load.poll() is None
        probe["note"] = bulk_note(before, bulk_work(url, "interrogation"), "interrogation")
        stdout, _ = load.communicate(timeout=args.start_timeout)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    case = f"{args.interrogations} /interrogate mode=best, max_flavors={args.max_flavors}, at once"
    report = run.add(server, case, loadgen_report(stdout))
    running = (
        "still running when the probe ended"
        if still_running
        else "WARNING: finished before the probe ended, which then ran partly quiet"
    )
    return probe, f"{running}; answers {report['statuses']}"


def table_mib(dim: int) -> float:
    """The label tables' float32 embeddings, as the encoder holds them."""
    labels = sum(len(t.labels) for t in read_label_tables().values())
    return labels * dim * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("/work/bench-models"))
    parser.add_argument("--burst", type=int, default=64, help="clients of the bursts")
    parser.add_argument("--burst-texts", type=int, default=10, help="per client, text burst")
    parser.add_argument("--clients", type=int, default=32, help="closed loop /vectorize")
    parser.add_argument("--duration", type=float, default=15, help="seconds, /vectorize")
    parser.add_argument("--warmup", type=float, default=8, help="seconds, /vectorize")
    parser.add_argument("--probe-requests", type=int, default=50, help="one-text p50 probes")
    parser.add_argument("--p99-requests", type=int, default=200, help="one-text p99 probes")
    parser.add_argument("--later-s", type=float, default=30, help="wait before the 2nd probe")
    parser.add_argument("--interrogations", type=int, default=4)
    parser.add_argument("--max-flavors", type=int, default=2, help="of each interrogation")
    parser.add_argument(
        "--interrogation-warmup", type=float, default=20, help="seconds before the probe"
    )
    parser.add_argument("--batch-sizes", default="1,8,16,32", help="in-process model loop")
    parser.add_argument("--ceiling-seconds", type=float, default=6, help="per batch size")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VAL")
    parser.add_argument("--start-timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, help="default benchmarks/results/serving_core.md")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-core-"))
    clip_dir = (args.models / "hf-clip").resolve()
    dim = embedding_dim(clip_dir)
    base = {
        "CLIP_MODEL": str(clip_dir),
        "CAPTION_MODEL": str((args.models / "blip").resolve()),
        **parse_env(args.server_env),
    }
    jpeg = make_jpeg(work / "generated.jpg")
    run = Run(args, write_payloads(work, jpeg, args.max_flavors))
    timings: dict[str, float] = {}

    start = time.perf_counter()
    local_text, best = in_process(base, jpeg, args)
    gc.collect()  # the model goes before the servers start
    timings["in process"] = time.perf_counter() - start

    start = time.perf_counter()
    fresh_settings = {**base, "LABEL_CACHE_DIR": str(work / "fresh-cache")}
    with served("fresh", fresh_settings, work, run) as (url, fresh_burst, _):
        run.notes["fresh server GET /model, after its burst"] = f"`{json.dumps(model_json(url))}`"
        during, before = tables_state(url), bulk_work(url, "background")
        building = run.probe("fresh", url, "one text, tables building", args.probe_requests)
        building["note"] = f"tables {during} before; {tables_state(url)} after; " + bulk_note(
            before, bulk_work(url, "background"), "background"
        )
    timings["fresh server"] = time.perf_counter() - start

    start = time.perf_counter()
    quiet_settings = {**base, "LABEL_CACHE_DIR": str(work / "quiet-cache")}
    seed_label_cache(work / "quiet-cache", str(clip_dir), dim)
    with served("quiet", quiet_settings, work, run) as (url, quiet_burst, log):
        run.notes["quiet server GET /model"] = f"`{json.dumps(model_json(url))}`"
        quiet = run.common_traffic("quiet", url)
        probe, interrogations = interrogating(run, "quiet", url)
        rss = {"quiet": rss_by_service(url)}
    if tables_built_in_log(log):
        run.notes["warning"] = "the quiet server built label tables (its seeded cache was unused)"
    timings["quiet server"] = time.perf_counter() - start

    start = time.perf_counter()
    clip_only = {**base, "CAPTION_MODEL": "none", "LABEL_CACHE_DIR": str(work / "none-cache")}
    with served("clip-only", clip_only, work, run) as (url, _, _):
        run.common_traffic("clip-only", url)
        rss["clip-only"] = rss_by_service(url)
    timings["CLIP-only server"] = time.perf_counter() - start

    bursts = (fresh_burst, quiet_burst)
    goals = goal_rows(args, local_text, best, bursts, building, quiet, probe)
    goals.append(memory_goal(rss, table_mib(dim)))
    lines = {
        "versions": versions(),
        "model": f"{clip_dir} (transformers format) and {base['CAPTION_MODEL']} (BLIP)",
        "payloads": f"image: {len(jpeg)} B JPEG, raw body to /vectorize; text: {TEXT!r}, one "
        f"per /encode; interrogation: the same JPEG, mode best, max_flavors={args.max_flavors} "
        "(0.6.0's default is 32: bounded so each runs about as long as the measurement "
        "beside it, not far longer)",
        "load": "benchmarks/loadgen.py in its own process for every request; bursts are sent "
        f"at once; /vectorize closed loop {args.duration:g} s after {args.warmup:g} s warm-up",
        "in process": f"the served model code (production_encoder), no server running: one "
        f"text p50 {local_text['p50']:.1f} ms; model loop best {best['image']:.1f} img/s "
        f"(batch sizes {args.batch_sizes}, preprocessed pixels)",
        "settings": ", ".join(f"{k}={v}" for k, v in base.items())
        + "; LABEL_CACHE_DIR empty (fresh), seeded (quiet); CAPTION_MODEL=none (CLIP-only)",
        "interrogations": interrogations,
        "step durations": ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
        **run.notes,
    }
    text = (
        header("Serving core: bursts, one text beside bulk work, memory", lines)
        + "\n"
        + goals_table(goals)
        + "\n"
        + memory_table(rss)
        + "\n"
        + details_table(run.rows)
    )
    write_results("serving_core", text, args.out)


@dataclass(frozen=True)
class Goal:
    """One row of the goals table; ``cause`` is said only when the goal is missed."""

    figure: str
    measured: str
    ratio: float | None
    goal: str
    met: bool
    cause: str

    def row(self) -> tuple[str, str, str, str, str]:
        return (
            self.figure,
            self.measured,
            fmt_ratio(self.ratio),
            self.goal,
            "yes" if self.met else "no",
        )


def goal_rows(
    args: argparse.Namespace,
    local_text: dict[str, float],
    best: dict[str, float],
    bursts: tuple[dict, dict],
    building: dict,
    quiet: dict[str, dict],
    probe: dict,
) -> list[Goal]:
    """The speed goals, measured; causes from what the same run shows beside them."""
    n, (fresh_burst, quiet_burst) = args.burst, bursts
    local, quiet_p50 = local_text["p50"], quiet["quiet"]["p50"]

    def overhead(report: dict) -> str:
        """How much of a one-text ratio the served path itself explains."""
        return (
            f"a quiet server's one text is already {fmt_ratio(ratio(quiet_p50, local))} "
            "in-process (HTTP, entry service, hop to the encoder); this one is "
            f"{fmt_ratio(ratio(report['p50'], quiet_p50))} the quiet server's"
        )

    r = ratio(fresh_burst["throughput"], quiet_burst["throughput"])
    goals = [
        Goal(
            f"{n} /vectorize at once right after /readyz, fresh server (tables building) vs "
            "quiet server (tables seeded)",
            f"{ok(fresh_burst)} of {n} answered 200 (quiet {ok(quiet_burst)} of {n}); "
            f"{fresh_burst['throughput']:.1f} vs {quiet_burst['throughput']:.1f} img/s",
            r,
            f"{n} of {n}, >= 0.8x",
            ok(fresh_burst) == n and r is not None and r >= 0.8,
            f"answers {fresh_burst['statuses']}; the table build's slices run between the "
            "burst's batches whenever the image queue is empty, on the same cores",
        )
    ]
    for figure, report, goal, cause in (
        (
            "one /encode text p50 while the tables build vs in-process",
            building,
            2.0,
            f"{overhead(building)}: the wait for the background slice in progress "
            f"({building.get('note', '')})",
        ),
        (
            f"one text p50 right after {n * args.burst_texts} texts from {n} clients vs in-process",
            quiet["after burst"],
            1.3,
            overhead(quiet["after burst"]),
        ),
        (
            f"the same, {args.later_s:g} s later, vs in-process",
            quiet["later"],
            1.3,
            overhead(quiet["later"]),
        ),
    ):
        r = ratio(report["p50"], local)
        goals.append(
            Goal(
                figure,
                f"{fmt(report['p50'], 1)} vs {local:.1f} ms",
                r,
                f"<= {goal}x",
                r is not None and r <= goal and report["errors"] == 0,
                cause,
            )
        )
    served_images = quiet["vectorize"]["throughput"]
    r = ratio(served_images, best["image"])
    decode = ratio(best["image+decode"], best["image"])
    goals.append(
        Goal(
            f"served /vectorize at {args.clients} clients vs the in-process model loop (best "
            "batch, preprocessed pixels)",
            f"{served_images:.1f} vs {best['image']:.1f} img/s",
            r,
            ">= 0.9x",
            r is not None and r >= 0.9,
            "on 2 cores the entry service's HTTP handling, JPEG decoding and preprocessing "
            f"(the in-process decode + preprocess + model loop alone is {fmt_ratio(decode)} "
            "of the model loop) and the pickled hop to ClipEncoder take CPU from the model",
        )
    )
    r = ratio(probe["p99"], quiet["quiet"]["p99"])
    goals.append(
        Goal(
            f"one /encode text p99 with {args.interrogations} best-mode interrogations running "
            "vs quiet",
            f"{fmt(probe['p99'], 1)} vs {fmt(quiet['quiet']['p99'], 1)} ms",
            r,
            "<= 2x",
            r is not None and r <= 2 and probe["errors"] == 0,
            "a one-text request waits for the interrogation slice in progress, and the "
            "interrogations' BLIP captions and image work run in other processes on the same "
            f"cores ({probe.get('note', '')})",
        )
    )
    return goals


def memory_goal(rss: dict[str, dict[str, float]], tables_mib: float) -> Goal:
    """Tables only in the model worker: the entry service grows by far less than them."""
    entry = rss["quiet"].get("ClipApi", 0.0) - rss["clip-only"].get("ClipApi", 0.0)
    encoder = rss["quiet"].get("ClipEncoder", 0.0) - rss["clip-only"].get("ClipEncoder", 0.0)
    return Goal(
        "entry service RSS, quiet server with tables vs CLIP-only",
        f"entry {rss['quiet'].get('ClipApi', 0):.0f} vs {rss['clip-only'].get('ClipApi', 0):.0f}"
        f" MiB ({entry:+.0f}); ClipEncoder {encoder:+.0f} MiB; tables {tables_mib:.0f} MiB",
        entry / tables_mib,
        "tables only in model workers (entry grows < 0.25x the tables)",
        entry < 0.25 * tables_mib,
        "the entry service grew by more than a quarter of the tables' size: look for a copy "
        "of them (or of features) held outside the encoder",
    )


def goals_table(goals: list[Goal]) -> str:
    """The goals table, then one sentence on the likely cause of each miss."""
    table = markdown_table(["figure", "measured", "ratio", "goal", "met"], [g.row() for g in goals])
    misses = [f"- {g.figure}: missed; likely cause: {g.cause}." for g in goals if not g.met]
    return table + ("\n" + "\n".join(misses) + "\n" if misses else "")


def memory_table(rss: dict[str, dict[str, float]]) -> str:
    """RSS per service on both servers: the memory each part costs."""
    names = [*SERVICES, *sorted(set(rss["quiet"]) - set(SERVICES))]
    rows = []
    for name in names:
        quiet, clip_only = rss["quiet"].get(name), rss["clip-only"].get(name)
        diff = "" if quiet is None or clip_only is None else f"{quiet - clip_only:+.0f}"
        rows.append((name, fmt(quiet), fmt(clip_only), diff))
    head = ["process", "quiet server, tables + BLIP (MiB)", "CLIP-only server (MiB)", "difference"]
    return markdown_table(head, rows)


def details_table(rows: list[Row]) -> str:
    head = ["server", "case", "requests", "200s", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    body = [
        (
            r.server,
            r.case,
            r.report["requests"],
            ok(r.report),
            f"{r.report['throughput']:.1f}",
            fmt(r.report["p50"], 1),
            fmt(r.report["p95"], 1),
            fmt(r.report["p99"], 1),
            fmt(r.report["max"], 1),
        )
        for r in rows
    ]
    notes = [
        f"- {r.server}, {r.case}: {r.report.get('note', '')}{describe_errors(r.report)}"
        for r in rows
        if r.report.get("note") or r.report["errors"]
    ]
    return markdown_table(head, body) + ("\n" + "\n".join(notes) + "\n" if notes else "")


def describe_errors(report: dict[str, Any]) -> str:
    if not report["errors"]:
        return ""
    first = (report["first_error"] or "")[:120]
    return f" statuses {report['statuses']}, first error: {first}"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


if __name__ == "__main__":
    main()
