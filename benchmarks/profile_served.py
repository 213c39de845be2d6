"""Where the served path's CPU goes: one-text and one-image requests, entry and encoder.

``bentoml serve`` of this repository (CLIP only, the full-size random-weight model) under
closed-loop load of one request type at a time; meanwhile ``py-spy record`` samples every
worker process (entry ``ClipApi``, model ``ClipEncoder``) and psutil counts each one's CPU
time. The results give, per workload and client count:

* CPU milliseconds per request in each process (psutil: exact, all threads);
* how each process's samples split over the layers of the path (HTTP server, middleware,
  validation and JSON, the hop to the model service and its serialisation, the scheduler,
  tokenisation, decode and preprocessing, the model itself), each sample given to the layer
  of the frame nearest its leaf that belongs to one;
* the functions with the most samples of their own (leaf frames).

    python benchmarks/profile_served.py [--models /work/bench-models] [--clients 1,32] \
        [--duration 20] [--rate 200]

``--flamegraphs DIR`` also keeps each process's samples as py-spy's speedscope files.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from harness import TEXT, Scenario, fmt, load, make_jpeg, table, write

from clip_service.testing.soak import process_name, server_processes

# Layer of a frame, by its file: the first pattern that matches, from the leaf up.
LAYERS: list[tuple[str, re.Pattern[str]]] = [
    ("model (torch, ONNX Runtime)", re.compile(r"torch/|transformers/models/|open_clip/|onnx")),
    ("tokenisation", re.compile(r"tokenizers|tokenization|text_prefix")),
    ("decode + preprocess", re.compile(r"PIL/|models/preprocess|inputs/images|numpy/")),
    ("hop: serialisation", re.compile(r"pickle|_bentoml_sdk/|bentoml/_internal/(io|serde)")),
    ("hop: client and transport", re.compile(r"aiohttp/|_bentoml_impl/client|multidict|yarl")),
    ("scheduler", re.compile(r"clip_service/scheduling/")),
    ("validation and JSON", re.compile(r"pydantic|json|clip_service/server/schemas")),
    ("middleware", re.compile(r"clip_service/server/middleware|clip_service/process/|middleware")),
    ("HTTP server", re.compile(r"uvicorn/|starlette/|fastapi/|h11|httptools|_bentoml_impl/")),
    ("event loop", re.compile(r"asyncio/|uvloop|anyio/|concurrent/|threading")),
]
OTHER = "other"
# Leaves where a thread waits (py-spy here samples some threads blocked in epoll or on a
# lock as active): left out, so the shares are of the time spent working.
WAITING = re.compile(r"^(EpollSelector\.select|Condition\.wait|Event\.wait|_worker \(concurrent)")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class Workload:
    kind: str
    route: str
    body: Path
    content_type: str


def layer_of(stack: list[str]) -> str:
    """The layer of the frame nearest the leaf that belongs to one."""
    for frame in reversed(stack):
        match = _FRAME.match(frame)
        where = match["file"] if match else frame
        for layer, pattern in LAYERS:
            if pattern.search(where):
                return layer
    return OTHER


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's ``raw`` output: ``frame;frame;...;leaf count`` per line (root first)."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            # py-spy puts the thread's name first: "process 12:\"...\";thread (0x..);frames"
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            if frames and not WAITING.match(frames[-1]):
                stacks.append((frames, int(count)))
    return stacks


def workers(port: int) -> dict[str, list[psutil.Process]]:
    """The server's worker processes by service name."""
    root = server_processes(port)
    if root is None:
        raise RuntimeError(f"no server listens on {port}")
    found: dict[str, list[psutil.Process]] = collections.defaultdict(list)
    for process in root.children(recursive=True):
        name = process_name(process)
        if name in ("ClipApi", "ClipEncoder"):
            found[name].append(process)
    return found


def cpu_s(processes: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def profile(
    scenario: Scenario, url: str, port: int, w: Workload, clients: int
) -> tuple[dict, dict[str, list[tuple[list[str], int]]]]:
    """One load run with py-spy on every worker: the load report, CPU s per service, and
    each service's collapsed stacks."""
    args = scenario.args
    by_service = workers(port)
    spies, outputs = [], collections.defaultdict(list)
    for service, processes in by_service.items():
        for process in processes:
            out = scenario.work / f"{w.kind}-{clients}-{service}-{process.pid}.txt"
            command = [shutil.which("py-spy") or "py-spy", "record", "--nonblocking"]
            command += ["--pid", str(process.pid), "--rate", str(args.rate), "--format", "raw"]
            command += ["--duration", str(int(args.duration) + 1), "--output", str(out)]
            spies.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            )
            outputs[service].append(out)
    time.sleep(0.5)  # py-spy attached
    before = {service: cpu_s(processes) for service, processes in by_service.items()}
    report = load(
        url + w.route, w.body, w.content_type, concurrency=clients, duration=args.duration
    )
    report["cpu_s"] = {s: cpu_s(p) - before[s] for s, p in by_service.items()}
    for spy in spies:
        _, err = spy.communicate(timeout=120)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
    stacks = {
        s: [st for path in paths for st in read_collapsed(path)] for s, paths in outputs.items()
    }
    return report, stacks


def layer_rows(stacks: list[tuple[list[str], int]], cpu_ms_per_request: float) -> list[tuple]:
    totals: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        totals[layer_of(frames)] += count
    samples = sum(totals.values()) or 1
    order = [layer for layer, _ in LAYERS] + [OTHER]
    return [
        (
            layer,
            f"{100 * totals[layer] / samples:.0f} %",
            fmt(cpu_ms_per_request * totals[layer] / samples, 2),
        )
        for layer in order
        if totals[layer]
    ]


def top_leaves(stacks: list[tuple[list[str], int]], n: int) -> list[tuple]:
    leaves: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        if frames:
            leaves[frames[-1]] += count
    samples = sum(leaves.values()) or 1
    return [(f"`{leaf[:110]}`", f"{100 * c / samples:.1f} %") for leaf, c in leaves.most_common(n)]


def main() -> None:
    scenario = Scenario("profile_served", __doc__)
    scenario.arg("--clip-format", choices=("hf-clip", "open-clip"), default="hf-clip")
    scenario.arg("--clients", default="1,32")
    scenario.arg("--duration", type=float, default=20, help="seconds per run")
    scenario.arg("--warmup", type=float, default=8, help="seconds per workload")
    scenario.arg("--rate", type=int, default=200, help="py-spy samples per second")
    scenario.arg("--top", type=int, default=12, help="leaf functions listed per process")
    args = scenario.parse()
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install -r requirements/bench.txt")
    work = scenario.work
    workloads = [
        Workload(
            "text", "/encode", write(work / "text.json", [{"text": TEXT}]), "application/json"
        ),
        Workload("image", "/vectorize", write(work / "image.jpg", make_jpeg()), "image/jpeg"),
    ]
    model = scenario.model_dir(args.clip_format)
    settings = {"CLIP_MODEL": str(model), "CAPTION_MODEL": "none", **scenario.server_env()}
    sections, summary = [], []
    with scenario.serve("ours", settings) as server:
        port = int(server.url.rsplit(":", 1)[1])
        for w in workloads:
            load(server.url + w.route, w.body, w.content_type, concurrency=32, duration=args.warmup)
            for clients in (int(c) for c in args.clients.split(",")):
                with scenario.step(f"{w.kind} x{clients}"):
                    report, stacks = profile(scenario, server.url, port, w, clients)
                done = report["requests"] - report["errors"]
                if done <= 0 or report["errors"]:
                    raise RuntimeError(f"{w.kind} x{clients}: {report}")
                per_request = {s: 1000 * cpu / done for s, cpu in report["cpu_s"].items()}
                summary.append(
                    (
                        w.kind,
                        clients,
                        fmt(report["throughput"], 1),
                        fmt(report["p50"]),
                        *(fmt(per_request.get(s, 0), 2) for s in ("ClipApi", "ClipEncoder")),
                    )
                )
                for service, service_stacks in sorted(stacks.items()):
                    title = f"### {w.kind} (`{w.route}`), {clients} clients: {service}"
                    layers = table(
                        ("layer", "share of samples", "CPU ms / request"),
                        layer_rows(service_stacks, per_request[service]),
                    )
                    leaves = table(
                        ("leaf function (file:line)", "share"), top_leaves(service_stacks, args.top)
                    )
                    sections.append(f"{title}\n\n{layers}\n\n{leaves}\n")
    head = (
        "workload",
        "clients",
        "requests/s",
        "p50 ms",
        "entry CPU ms / request",
        "encoder CPU ms / request",
    )
    scenario.write(
        "Profile of the served path",
        {
            "model": f"{model} (full-size random weights), CAPTION_MODEL=none",
            "profiler": f"py-spy record --nonblocking --rate {args.rate}, samples of waiting "
            "threads (in epoll, on a lock or an empty queue) left out; "
            "CPU per request from psutil's process times over the same window",
        },
        "### CPU per request\n\n" + table(head, summary) + "\n",
        *sections,
    )


if __name__ == "__main__":
    main()
