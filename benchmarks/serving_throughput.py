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

import argparse
import base64
import contextlib
import gc
import io
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (
    bentoml_command,
    bentoml_env,
    header,
    markdown_table,
    model_answer,
    parse_env,
    production_encoder,
    run_loadgen,
    seed_label_cache,
    server_process,
    tables_built_in_log,
    versions,
    write_results,
)
from clip_service.inputs.images import decode_image
from clip_service.models.clip import ClipModel
from clip_service.models.preprocess import build_preprocessor
from tests.conftest import free_port

HERE = Path(__file__).resolve().parent
SYSTEMS = ("ceiling", "ours", "naive", "infinity")
TEXT = "a photo of a cat sitting on a wooden table next to a window"


@dataclass(frozen=True)
class Workload:
    kind: str  # "image" or "text"
    route: str
    body: Path
    content_type: str


@dataclass
class Row:
    system: str
    kind: str
    clients: str
    throughput: float
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    errors: str = ""


def make_jpeg(path: Path, size: tuple[int, int] = (320, 240)) -> bytes:
    """A photo-like JPEG (smooth shapes plus grain; ~20 KB), written to ``path``."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).resize(size, 3)
    grain = rng.normal(0, 6, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(coarse.filter(ImageFilter.GaussianBlur(4)), float) + grain, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def write_payloads(work: Path, jpeg: bytes, infinity_model: str) -> dict[str, list[Workload]]:
    """Each system's image and text workload over the same JPEG and text."""
    (work / "image.jpg").write_bytes(jpeg)
    (work / "text.json").write_text(json.dumps([{"text": TEXT}]))
    uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    for kind, item in (("image", uri), ("text", TEXT)):
        body = {"model": infinity_model, "input": [item], "modality": kind}
        (work / f"infinity-{kind}.json").write_text(json.dumps(body))
    ours = [
        Workload("image", "/vectorize", work / "image.jpg", "image/jpeg"),
        Workload("text", "/encode", work / "text.json", "application/json"),
    ]
    infinity = [
        Workload(kind, "/embeddings", work / f"infinity-{kind}.json", "application/json")
        for kind in ("image", "text")
    ]
    return {"ours": ours, "naive": ours, "infinity": infinity}


def infinity_model_dir(hf_dir: Path, out: Path) -> Path:
    """``hf_dir`` as infinity 0.0.78 (transformers 4.47) loads it: ``preprocessor_config.json``
    holds the image processor part of transformers 5's ``processor_config.json``, which is
    left out. Weights and tokenizer files are symlinked, not copied."""
    out.mkdir(parents=True, exist_ok=True)
    for source in hf_dir.iterdir():
        target = out / source.name
        if source.name in ("processor_config.json", "preprocessor_config.json"):
            continue
        if not target.exists():
            target.symlink_to(source.resolve())
    processor = json.loads((hf_dir / "processor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(json.dumps(processor["image_processor"]))
    return out


def embedding_dim(model_dir: Path) -> int:
    if (model_dir / "open_clip_config.json").is_file():
        return json.loads((model_dir / "open_clip_config.json").read_text())["model_cfg"][
            "embed_dim"
        ]
    return json.loads((model_dir / "config.json").read_text())["projection_dim"]


def rate(step: Callable[[], int], seconds: float) -> float:
    """Items per second of ``step`` (returns items done) over ~``seconds``, after one warm-up."""
    step()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += step()
    return done / (time.perf_counter() - start)


def ceiling(
    encoder: ClipModel, jpeg: bytes, batch_sizes: list[int], seconds: float
) -> tuple[list[Row], dict[str, float]]:
    """In-process batched loops on the production model object (``production_encoder``);
    the best figures, by workload: ``image`` (model only), ``image+decode``, ``text``."""
    preprocess = build_preprocessor(encoder.info().preprocess)
    pixels = preprocess(decode_image(jpeg, "body", max_pixels=10**8))
    rows, best = [], {}
    images = {}
    for b in batch_sizes:
        batch = np.stack([pixels] * b)
        images[b] = rate(lambda batch=batch: len(encoder.encode_images(batch)), seconds)
        rows.append(Row("ceiling: model loop", "image", f"batch {b}", images[b]))
        print(f"ceiling image batch {b}: {images[b]:.1f} img/s", flush=True)
    b_best = max(images, key=images.__getitem__)
    best["image"] = images[b_best]

    def full_step(b: int = b_best) -> int:
        decoded = [decode_image(jpeg, "body", max_pixels=10**8) for _ in range(b)]
        return len(encoder.encode_images(np.stack([preprocess(im) for im in decoded])))

    best["image+decode"] = rate(full_step, seconds)
    rows.append(
        Row(
            "ceiling: decode+preprocess+model loop",
            "image",
            f"batch {b_best}",
            best["image+decode"],
        )
    )
    texts = {}
    for b in batch_sizes:
        batch_texts = [TEXT] * b
        texts[b] = rate(lambda t=batch_texts: len(encoder.encode_texts(t)), seconds)
        rows.append(Row("ceiling: model loop", "text", f"batch {b}", texts[b]))
        print(f"ceiling text batch {b}: {texts[b]:.1f} texts/s", flush=True)
    best["text"] = max(texts.values())
    return rows, best


def measure(
    system: str, url: str, workloads: list[Workload], args: argparse.Namespace
) -> list[Row]:
    """Check the answer, warm up at the highest level, then every level, per workload."""
    rows = []
    for w in workloads:
        target = url + w.route
        check_answer(system, target, w, args.dim)
        loadgen(target, w, max(args.concurrency), args.warmup)  # warm-up, not recorded
        for n in args.concurrency:
            result = loadgen(target, w, n, args.duration)
            errors = f"{result['errors']}" + (
                f" ({result['first_error'][:80]})" if result["first_error"] else ""
            )
            rows.append(
                Row(
                    system,
                    w.kind,
                    str(n),
                    result["throughput"],
                    result["p50"],
                    result["p95"],
                    result["p99"],
                    errors,
                )
            )
            print(
                f"{system} {w.route} x{n}: {result['throughput']:.1f}/s p50 {result['p50']}",
                flush=True,
            )
    return rows


def check_answer(system: str, url: str, w: Workload, dim: int) -> None:
    """One request must answer 200 with one embedding of the model's width, so every
    system is timed doing the same work (not answering errors or something else)."""
    response = httpx.post(
        url, content=w.body.read_bytes(), headers={"content-type": w.content_type}, timeout=600
    )
    response.raise_for_status()
    answer = response.json()
    vector = (
        answer["data"][0]["embedding"]
        if system == "infinity"
        else answer["vector"]
        if w.route == "/vectorize"
        else answer[0]
    )
    if len(vector) != dim:
        raise RuntimeError(f"{system} {w.route}: embedding of {len(vector)} values, not {dim}")


def loadgen(url: str, w: Workload, concurrency: int, duration: float) -> dict:
    options = ("--concurrency", str(concurrency), "--duration", str(duration))
    return run_loadgen(url, w.body, w.content_type, *options)


def infinity_versions(venv: Path) -> str:
    code = (
        "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in "
        "('infinity-emb', 'transformers', 'torch')))"
    )
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
    return "not installed"


def fmt(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def pick(rows: list[Row], system: str, kind: str, clients: str) -> float | None:
    found = [r.throughput for r in rows if (r.system, r.kind, r.clients) == (system, kind, clients)]
    return found[0] if found else None


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("/work/bench-models"))
    parser.add_argument("--clip-format", choices=("hf-clip", "open-clip"), default="hf-clip")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=15, help="seconds per level")
    parser.add_argument("--warmup", type=float, default=8, help="seconds per server workload")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32", help="for the ceiling")
    parser.add_argument("--ceiling-seconds", type=float, default=6, help="per batch size")
    parser.add_argument("--goal-clients", type=int, default=32)
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VAL")
    parser.add_argument("--infinity-venv", type=Path, default=Path("/work/infinity-venv"))
    parser.add_argument("--infinity-args", default="", help="extra `infinity_emb v2` arguments")
    parser.add_argument("--image", type=Path, help="a JPEG to send (default: generated)")
    parser.add_argument("--start-timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, help="default benchmarks/results/serving_throughput.md")
    args = parser.parse_args()
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    systems = [s for s in args.systems.split(",") if s]
    if unknown := set(systems) - set(SYSTEMS):
        raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    clip_dir = (args.models / args.clip_format).resolve()
    hf_dir = (args.models / "hf-clip").resolve()
    args.dim = embedding_dim(clip_dir)
    clip_spec = f"local-dir:{clip_dir}" if args.clip_format == "open-clip" else str(clip_dir)
    settings = {
        "CLIP_MODEL": clip_spec,
        "CAPTION_MODEL": str((args.models / "blip").resolve()),
        "LABEL_CACHE_DIR": str(work / "label-cache"),
        **parse_env(args.server_env),
    }
    jpeg = args.image.read_bytes() if args.image else make_jpeg(work / "generated.jpg")
    infinity_dir = infinity_model_dir(hf_dir, work / "infinity-model")
    workloads = write_payloads(work, jpeg, str(infinity_dir))
    rows: list[Row] = []
    best: dict[str, float] = {}
    notes: dict[str, str] = {}
    timings = {}

    if "ceiling" in systems:
        start = time.perf_counter()
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        encoder = production_encoder(settings)
        ceiling_rows, best = ceiling(encoder, jpeg, sizes, args.ceiling_seconds)
        del encoder
        rows += ceiling_rows
        gc.collect()  # the model goes before the servers start
        timings["ceiling"] = time.perf_counter() - start
    if "ours" in systems:
        start = time.perf_counter()
        seed_label_cache(Path(settings["LABEL_CACHE_DIR"]), clip_spec, args.dim)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = bentoml_env(work / "bentoml-home", settings)
        with server_process(
            "ours",
            bentoml_command(port),
            f"{url}/readyz",
            work,
            env=env,
            timeout_s=args.start_timeout,
        ) as log:
            notes["ours GET /model"] = f"`{model_answer(url)}`"
            rows += measure("ours", url, workloads["ours"], args)
        if tables_built_in_log(log):
            notes["warning"] = "our server built label tables during the run (cache not used)"
        timings["ours"] = time.perf_counter() - start
    if "naive" in systems:
        start = time.perf_counter()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, str(HERE / "naive_server.py"), str(hf_dir), "--port", str(port)]
        with server_process(
            "naive",
            command,
            f"{url}/health",
            work,
            env={"HF_HUB_OFFLINE": "1"},
            timeout_s=args.start_timeout,
        ):
            rows += measure("naive", url, workloads["naive"], args)
        timings["naive"] = time.perf_counter() - start
    if "infinity" in systems:
        start = time.perf_counter()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [
            str(args.infinity_venv / "bin" / "infinity_emb"),
            "v2",
            "--model-id",
            str(infinity_dir),
            "--engine",
            "torch",
            "--device",
            "cpu",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *shlex.split(args.infinity_args),
        ]
        env = {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        with server_process(
            "infinity", command, f"{url}/health", work, env=env, timeout_s=args.start_timeout
        ):
            rows += measure("infinity", url, workloads["infinity"], args)
        timings["infinity"] = time.perf_counter() - start

    # The level the goals are stated at (32 clients), or the nearest one measured.
    goal = str(min(args.concurrency, key=lambda n: abs(n - args.goal_clients)))
    served = pick(rows, "ours", "image", goal)
    goals = [
        (
            f"served /vectorize ({goal} clients) vs in-process model loop (best batch)",
            ratio(served, best.get("image")),
            ">= 0.9x",
        ),
        (
            f"served /vectorize ({goal} clients) vs in-process decode+preprocess+model loop",
            ratio(served, best.get("image+decode")),
            "",
        ),
        (
            f"served /vectorize vs naive /vectorize ({goal} clients)",
            ratio(served, pick(rows, "naive", "image", goal)),
            ">= 2x",
        ),
        (
            f"served /vectorize vs infinity image ({goal} clients)",
            ratio(served, pick(rows, "infinity", "image", goal)),
            "> 1x",
        ),
        (
            f"served /encode vs infinity text ({goal} clients)",
            ratio(pick(rows, "ours", "text", goal), pick(rows, "infinity", "text", goal)),
            "> 1x",
        ),
        (
            f"served /encode ({goal} clients) vs in-process text loop (best batch)",
            ratio(pick(rows, "ours", "text", goal), best.get("text")),
            "",
        ),
    ]
    lines = {
        "versions": versions({"infinity venv": infinity_versions(args.infinity_venv)}),
        "model": f"{clip_spec} (ours, ceiling); {hf_dir} (naive, infinity: same weights)",
        "payloads": f"image: {len(jpeg)} B JPEG {Image.open(io.BytesIO(jpeg)).size} "
        f"(raw body to /vectorize, base64 data URI to infinity); text: {TEXT!r}, one per request",
        "load": f"benchmarks/loadgen.py in its own process, closed loop, {args.duration:g} s per "
        f"level after a {args.warmup:g} s warm-up at {max(args.concurrency)} clients",
        "our settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
        "infinity arguments": f"`--engine torch --device cpu {args.infinity_args}`".strip(),
        "answers checked": f"one embedding of {args.dim} values per request, every system",
        "step durations": ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
        **notes,
    }
    table = markdown_table(
        [
            "system",
            "workload",
            "clients / batch",
            "items/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "errors",
        ],
        [
            (
                r.system,
                r.kind,
                r.clients,
                f"{r.throughput:.1f}",
                fmt(r.p50),
                fmt(r.p95),
                fmt(r.p99),
                r.errors,
            )
            for r in rows
        ],
    )
    goal_table = markdown_table(["ratio", "measured", "goal"], goals)
    text = header("Serving throughput and latency", lines) + "\n" + table + "\n" + goal_table
    write_results("serving_throughput", text, args.out)
    shutil.rmtree(work / "infinity-model", ignore_errors=True)


if __name__ == "__main__":
    main()
