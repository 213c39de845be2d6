"""Serving throughput and latency: ours vs. the in-process ceiling, a naive server, infinity.

One run, side by side, on the same CLIP weights and payloads:

* ceiling: the served model code in this process (``ClipEncoder`` built with the server's
  settings), a batched loop at each batch size: model only, and decode + preprocess + model;
* ours: ``bentoml serve`` of this repository, ``POST /vectorize`` (raw JPEG) and
  ``POST /encode`` (one text per request);
* naive: ``benchmarks/naive_server.py`` (Flask, one request = one forward pass);
* infinity: infinity-emb 0.0.78 from its own venv (``benchmarks/setup_infinity.sh``) on the
  transformers-format directory, ``POST /embeddings`` with image / text modality.

Load comes from ``benchmarks/loadgen.py`` in a separate process: N closed-loop aiohttp
clients per level. Each server is started, warmed up at the highest level, measured at every
level, and stopped (its own process group only).

    python benchmarks/serving_throughput.py [--models /work/bench-models] \
        [--concurrency 1,8,32,64] [--duration 15] [--server-env KEY=VAL ...]
"""

from __future__ import annotations

import base64
import contextlib
import gc
import io
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from harness import (
    TEXT,
    Scenario,
    Server,
    embedding_dim,
    fmt,
    free_port,
    load,
    make_jpeg,
    model_loop,
    production_encoder,
    seed_label_cache,
    table,
    times,
    write,
)
from PIL import Image

SYSTEMS = ("ceiling", "ours", "naive", "infinity")


@dataclass(frozen=True)
class Workload:
    kind: str  # "image" or "text"
    route: str
    body: Path
    content_type: str = "application/json"


def payloads(work: Path, jpeg: bytes, infinity_model: Path) -> dict[str, list[Workload]]:
    """Each system's image and text workload over the same JPEG and text."""
    image, text = write(work / "image.jpg", jpeg), write(work / "text.json", [{"text": TEXT}])
    ours = [Workload("image", "/vectorize", image, "image/jpeg"), Workload("text", "/encode", text)]
    uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    infinity = []
    for kind, item in (("image", uri), ("text", TEXT)):
        body = {"model": str(infinity_model), "input": [item], "modality": kind}
        infinity.append(Workload(kind, "/embeddings", write(work / f"infinity-{kind}.json", body)))
    return {"ours": ours, "naive": ours, "infinity": infinity}


def infinity_model_dir(hf_dir: Path, out: Path) -> Path:
    """``hf_dir`` as infinity 0.0.78 (transformers 4.47) loads it: ``preprocessor_config.json``
    holds the image processor part of transformers 5's ``processor_config.json``, which is
    left out. Weights and tokenizer files are symlinked, not copied."""
    out.mkdir(parents=True, exist_ok=True)
    for source in hf_dir.iterdir():
        if source.name not in ("processor_config.json", "preprocessor_config.json"):
            (out / source.name).symlink_to(source.resolve())
    processor = json.loads((hf_dir / "processor_config.json").read_text())
    write(out / "preprocessor_config.json", processor["image_processor"])
    return out


def measure(system: str, server: Server, workloads: list[Workload], scenario: Scenario) -> list:
    """Check one answer, warm up at the highest level, then every level, per workload."""
    args, rows = scenario.args, []
    for w in workloads:
        target = server.url + w.route
        check_answer(system, target, w, args.dim)
        load(
            target, w.body, w.content_type, concurrency=max(args.concurrency), duration=args.warmup
        )
        for n in args.concurrency:
            r = load(target, w.body, w.content_type, concurrency=n, duration=args.duration)
            errors = f"{r['errors']}" + (f" ({r['first_error'][:80]})" if r["first_error"] else "")
            rows.append(
                (system, w.kind, str(n), r["throughput"], r["p50"], r["p95"], r["p99"], errors)
            )
            print(f"{system} {w.route} x{n}: {r['throughput']:.1f}/s p50 {r['p50']}", flush=True)
    return rows


def check_answer(system: str, url: str, w: Workload, dim: int) -> None:
    """One request must answer 200 with one embedding of the model's width, so every
    system is timed doing the same work (not answering errors or something else)."""
    headers = {"content-type": w.content_type}
    response = httpx.post(url, content=w.body.read_bytes(), headers=headers, timeout=600)
    response.raise_for_status()
    answer = response.json()
    if system == "infinity":
        vector = answer["data"][0]["embedding"]
    else:
        vector = answer["vector"] if w.route == "/vectorize" else answer[0]
    if len(vector) != dim:
        raise RuntimeError(f"{system} {w.route}: embedding of {len(vector)} values, not {dim}")


def infinity_versions(venv: Path) -> str:
    code = (
        "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in "
        "('infinity-emb', 'transformers', 'torch')))"
    )
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        command = [str(venv / "bin" / "python"), "-c", code]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    return "not installed"


def main() -> None:
    scenario = Scenario("serving_throughput", __doc__)
    scenario.arg("--clip-format", choices=("hf-clip", "open-clip"), default="hf-clip")
    scenario.arg("--systems", default=",".join(SYSTEMS))
    scenario.arg("--concurrency", default="1,8,32,64")
    scenario.arg("--duration", type=float, default=15, help="seconds per level")
    scenario.arg("--warmup", type=float, default=8, help="seconds per server workload")
    scenario.arg("--batch-sizes", default="1,4,8,16,32", help="for the ceiling")
    scenario.arg("--ceiling-seconds", type=float, default=6, help="per batch size")
    scenario.arg("--goal-clients", type=int, default=32)
    scenario.arg("--infinity-venv", type=Path, default=Path("/work/infinity-venv"))
    scenario.arg("--infinity-args", default="", help="extra `infinity_emb v2` arguments")
    scenario.arg("--image", type=Path, help="a JPEG to send (default: generated)")
    args, work = scenario.parse(), scenario.work
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    systems = [s for s in args.systems.split(",") if s]
    if unknown := set(systems) - set(SYSTEMS):
        raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")

    clip_dir, hf_dir = scenario.model_dir(args.clip_format), scenario.model_dir("hf-clip")
    args.dim = embedding_dim(clip_dir)
    clip_spec = f"local-dir:{clip_dir}" if args.clip_format == "open-clip" else str(clip_dir)
    settings = {
        "CLIP_MODEL": clip_spec,
        "CAPTION_MODEL": str(scenario.model_dir("blip")),
        "LABEL_CACHE_DIR": str(work / "label-cache"),
        **scenario.server_env(),
    }
    jpeg = args.image.read_bytes() if args.image else make_jpeg()
    infinity_dir = infinity_model_dir(hf_dir, work / "infinity-model")
    workloads = payloads(work, jpeg, infinity_dir)
    rows: list = []
    best: dict[str, float] = {}

    if "ceiling" in systems:
        with scenario.step("ceiling"):
            encoder = production_encoder(settings)
            sizes = [int(b) for b in args.batch_sizes.split(",")]
            loops, best = model_loop(encoder, jpeg, sizes, args.ceiling_seconds)
            rows += [(f"ceiling: {loop}", *rest, None, None, None, "") for loop, *rest in loops]
            del encoder
            gc.collect()  # the model goes before the servers start
    if "ours" in systems:
        with scenario.step("ours"):
            seed_label_cache(Path(settings["LABEL_CACHE_DIR"]), clip_spec, args.dim)
            with scenario.serve("ours", settings) as server:
                scenario.notes["ours GET /model"] = f"`{server.get('/model').text.strip()}`"
                rows += measure("ours", server, workloads["ours"], scenario)
            if server.built_tables():
                scenario.notes["warning"] = "our server built label tables (cache not used)"
    if "naive" in systems:
        with scenario.step("naive"):
            port = free_port()
            command = [sys.executable, "benchmarks/naive_server.py", str(hf_dir), f"--port={port}"]
            env = {"HF_HUB_OFFLINE": "1"}
            with scenario.process("naive", command, port, "/health", env) as server:
                rows += measure("naive", server, workloads["naive"], scenario)
    if "infinity" in systems:
        with scenario.step("infinity"):
            port = free_port()
            command = [
                str(args.infinity_venv / "bin" / "infinity_emb"), "v2", "--model-id",
                str(infinity_dir), "--engine", "torch", "--device", "cpu", "--host",
                "127.0.0.1", "--port", str(port), *shlex.split(args.infinity_args),
            ]  # fmt: skip
            env = {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
            with scenario.process("infinity", command, port, "/health", env) as server:
                rows += measure("infinity", server, workloads["infinity"], scenario)

    # The level the goals are stated at (32 clients), or the nearest one measured.
    goal = str(min(args.concurrency, key=lambda n: abs(n - args.goal_clients)))

    def pick(system: str, kind: str) -> float | None:
        found = [r[3] for r in rows if r[:3] == (system, kind, goal)]
        return found[0] if found else None

    image, text = pick("ours", "image"), pick("ours", "text")
    goals = [
        (f"served /vectorize ({goal} clients) vs in-process model loop (best batch)",
         times(image, best.get("image")), ">= 0.9x"),
        (f"served /vectorize ({goal} clients) vs in-process decode+preprocess+model loop",
         times(image, best.get("image+decode")), ""),
        (f"served /vectorize vs naive /vectorize ({goal} clients)",
         times(image, pick("naive", "image")), ">= 2x"),
        (f"served /vectorize vs infinity image ({goal} clients)",
         times(image, pick("infinity", "image")), "> 1x"),
        (f"served /encode vs infinity text ({goal} clients)",
         times(text, pick("infinity", "text")), "> 1x"),
        (f"served /encode ({goal} clients) vs in-process text loop (best batch)",
         times(text, best.get("text")), ""),
    ]  # fmt: skip
    lines = {
        "infinity venv": infinity_versions(args.infinity_venv),
        "model": f"{clip_spec} (ours, ceiling); {hf_dir} (naive, infinity: same weights)",
        "payloads": f"image: {len(jpeg)} B JPEG {Image.open(io.BytesIO(jpeg)).size} (raw body "
        f"to /vectorize, base64 data URI to infinity); text: {TEXT!r}, one per request",
        "load": f"benchmarks/loadgen.py in its own process, closed loop, {args.duration:g} s per "
        f"level after a {args.warmup:g} s warm-up at {max(args.concurrency)} clients",
        "our settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
        "infinity arguments": f"`--engine torch --device cpu {args.infinity_args}`".strip(),
        "answers checked": f"one embedding of {args.dim} values per request, every system",
    }
    head = [
        "system",
        "workload",
        "clients / batch",
        "items/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
    ]
    details = [(*r[:3], f"{r[3]:.1f}", fmt(r[4]), fmt(r[5]), fmt(r[6]), r[7]) for r in rows]
    scenario.write(
        "Serving throughput and latency",
        lines,
        table(head, details),
        table(["ratio", "measured", "goal"], goals),
    )


if __name__ == "__main__":
    main()
