"""The GPU check: CUDA parity, interrogation prompts vs clip-interrogator 0.6.0, and served
vs in-process speed, in one run (``benchmarks/gpu_check.sh`` prepares Python and models).

Steps, each server started and stopped in turn (load from ``benchmarks/loadgen.py``):

1. in process (transformers format, the served model code): one text and one image at a
   time (latency), and ``serving_throughput.ceiling``'s model loop per batch size;
2. server A, transformers format, CLIP only: parity (below), then one text and one image
   one after another and ``/vectorize`` at ``--clients`` clients;
3. server B, open_clip format (the same weights) with BLIP and label tables seeded on both
   sides (``common.seed_label_cache``, handed to the library in its cache format): parity,
   then each mode's served prompt vs 0.6.0's ``Interrogator`` in this process on the same
   device, with the same models in the precision 0.6.0 loads them in (fp16 on CUDA).

Parity: the server in its default precision on the device (fp16 on CUDA) encodes texts and
PNG images through ``/encode``; each library's own fp32 model encodes the same inputs here
on the CPU (its own tokenizer and preprocessing); every cosine must be >= 0.999.

    python benchmarks/gpu_check.py --models DIR [--dry-run] [--out FILE]
    python benchmarks/gpu_check.py --list-wheels     # what gpu_check.sh --fetch-wheels gets

``--dry-run``: on the CPU with whatever models ``--models`` holds (gpu_check.sh passes tiny
ones), every step, for checking this script without a GPU.

Exit status: 0 every parity check passed (embeddings and prompts); 1 one failed; 2 no CUDA
device (without ``--dry-run``; nothing run).
"""

from __future__ import annotations

import argparse
import base64
import gc
import importlib.metadata
import io
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (
    bentoml_command,
    bentoml_env,
    header,
    markdown_table,
    production_encoder,
    run_loadgen,
    seed_label_cache,
    server_process,
    tables_built_in_log,
    versions,
    wait_for_tables,
    write_results,
)
from benchmarks.interrogation_modes import LIBRARY_MODEL_NAME, MODES, library_interrogator
from benchmarks.serving_core import in_process_latency
from benchmarks.serving_throughput import TEXT, ceiling, embedding_dim, make_jpeg
from clip_service.inputs.images import decode_image
from clip_service.models.image_runtime import min_cosine
from clip_service.models.preprocess import build_preprocessor
from tests.conftest import free_port, make_image, write_library_cache

MIN_COSINE = 0.999
TEXTS = (
    TEXT,
    "a dog",
    "an oil painting of a lighthouse at dusk, by a famous artist, trending on artstation",
    "two people riding bicycles along a canal in the rain",
)
# Packages the NVIDIA image lent here already holds (the device tool's KINDS.md, read
# 2026-11-17), among those this project needs: never carried as wheels, the image's own
# (CUDA) builds are used.
GPU_IMAGE_PACKAGES = frozenset((
    "accelerate", "aiohappyeyeballs", "aiohttp", "aiosignal", "annotated-doc", "anyio",
    "attrs", "certifi", "charset-normalizer", "click", "cloudpickle", "filelock",
    "flatbuffers", "frozenlist", "fsspec", "h11", "hf-xet", "httpcore", "httpx",
    "huggingface-hub", "idna", "jinja2", "markdown-it-py", "markupsafe", "mdurl", "ml-dtypes",
    "mpmath", "multidict", "networkx", "numpy", "onnx", "onnx-ir", "onnxruntime", "onnxscript",
    "packaging", "pathspec", "pillow", "prometheus-client", "propcache", "protobuf", "psutil",
    "pygments", "pyparsing", "python-dateutil", "pyyaml", "regex", "requests", "rich",
    "safetensors", "setuptools", "shellingham", "sympy", "timm", "tokenizers", "torch",
    "torchvision", "tqdm", "transformers", "triton", "typer", "typing-extensions", "urllib3",
    "wrapt", "yarl",
))  # fmt: skip
GPU_IMAGE_PREFIXES = ("nvidia-", "cuda-")


def wheels_needed() -> list[str]:
    """``name==version`` of every package this project needs (this environment's resolution
    of ``clip-service``'s dependencies, recursively) that the GPU image does not hold."""
    found: dict[str, str] = {}
    todo = ["clip-service"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        dist = importlib.metadata.distribution(name)
        found[name] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return [
        f"{name}=={version}"
        for name, version in sorted(found.items())
        if name != "clip-service"
        and name not in GPU_IMAGE_PACKAGES
        and not name.startswith(GPU_IMAGE_PREFIXES)
    ]


class Check:
    """Figures and pass/fail verdicts of one run."""

    def __init__(self) -> None:
        self.parity: list[tuple[str, str, int, float, bool]] = []
        self.prompts: list[tuple[str, float, float, bool]] = []
        self.speed: list[tuple[str, str, str, str]] = []
        self.notes: dict[str, str] = {}

    @property
    def failed(self) -> list[str]:
        bad = [f"{b} {kind} cosine {c:.5f}" for b, kind, _, c, ok in self.parity if not ok]
        return bad + [f"{mode} prompt differs" for mode, _, _, same in self.prompts if not same]


def png_images(n: int) -> list[bytes]:
    """``n`` distinct noise images as PNG bytes (lossless: both sides decode the same pixels)."""
    out = []
    for seed in range(n):
        buffer = io.BytesIO()
        make_image(seed, (320, 240)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def served_vectors(url: str, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(texts, images) raw embeddings from one ``/encode`` request."""
    items = [{"text": t} for t in TEXTS]
    items += [{"img_blob": base64.b64encode(png).decode()} for png in images]
    response = httpx.post(f"{url}/encode", json=items, timeout=300)
    response.raise_for_status()
    vectors = np.asarray(response.json(), dtype=np.float32)
    return vectors[: len(TEXTS)], vectors[len(TEXTS) :]


@torch.inference_mode()
def reference_open_clip(model_dir: Path, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """open_clip's own fp32 model, tokenizer and preprocessing, on the CPU."""
    import open_clip

    spec = f"local-dir:{model_dir}"
    model, _, preprocess = open_clip.create_model_and_transforms(spec)
    model.eval()
    tokens = open_clip.get_tokenizer(spec)(list(TEXTS))
    pixels = torch.stack([preprocess(Image.open(io.BytesIO(png)).convert("RGB")) for png in images])
    return model.encode_text(tokens).numpy(), model.encode_image(pixels).numpy()


@torch.inference_mode()
def reference_transformers(model_dir: Path, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """transformers' own fp32 CLIPModel and CLIPProcessor, on the CPU."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)
    text_inputs = processor(text=list(TEXTS), padding=True, return_tensors="pt")
    pil = [Image.open(io.BytesIO(png)).convert("RGB") for png in images]
    image_inputs = processor(images=pil, return_tensors="pt")
    texts = model.get_text_features(**text_inputs)
    pictures = model.get_image_features(pixel_values=image_inputs["pixel_values"])
    # transformers 5 may return an output object
    return (
        getattr(texts, "pooler_output", texts).numpy(),
        getattr(pictures, "pooler_output", pictures).numpy(),
    )


def parity(check: Check, backend: str, url: str, model_dir: Path, images: list[bytes]) -> None:
    """Served (device, default precision) vs the library's fp32 on the CPU; >= MIN_COSINE."""
    served = served_vectors(url, images)
    reference = (reference_open_clip if backend == "open_clip" else reference_transformers)(
        model_dir, images
    )
    for kind, ours, theirs in zip(("texts", "images"), served, reference, strict=True):
        cosine = min_cosine(ours, theirs)
        check.parity.append((backend, kind, len(ours), cosine, cosine >= MIN_COSINE))
        print(f"parity {backend} {kind}: min cosine {cosine:.6f}", flush=True)


@contextmanager
def serve(
    name: str, settings: dict[str, str], work: Path, timeout_s: float
) -> Iterator[tuple[str, Path]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = bentoml_env(work / f"bentoml-{name}", settings)
    with server_process(
        name, bentoml_command(port), f"{url}/readyz", work, env=env, timeout_s=timeout_s
    ) as log:
        yield url, log


def served_model(url: str) -> str:
    info = httpx.get(f"{url}/model", timeout=30).json()
    return ", ".join(f"{k} {info[k]}" for k in ("backend", "device", "dtype", "precision"))


def in_process(
    check: Check, settings: dict[str, str], jpeg: bytes, args: argparse.Namespace
) -> dict[str, float]:
    """One text, one image, and the model loop in process; their figures by name."""
    model = production_encoder(settings)
    preprocess = build_preprocessor(model.info().preprocess)
    pixels = preprocess(decode_image(jpeg, "body", max_pixels=10**8))[None]
    text = in_process_latency(lambda: model.encode_texts([TEXT]), args.probe_requests)["p50"]
    image = in_process_latency(lambda: model.encode_images(pixels), args.probe_requests)["p50"]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows, best = ceiling(model, jpeg, sizes, args.ceiling_seconds)
    for row in rows:
        case = f"{row.system}, {row.kind}"
        check.speed.append(("in process", case, row.clients, f"{row.throughput:.1f}/s"))
    return {"text p50": text, "image p50": image, **best}


def served_speed(
    check: Check,
    url: str,
    work: Path,
    jpeg: bytes,
    local: dict[str, float],
    args: argparse.Namespace,
) -> None:
    """One text and one image one after another, then /vectorize at ``--clients``."""
    (work / "text.json").write_text(json.dumps([{"text": TEXT}]))
    (work / "image.jpg").write_bytes(jpeg)
    one = ("--concurrency", "1", "--requests", str(args.probe_requests))
    text = run_loadgen(f"{url}/encode", work / "text.json", "application/json", *one)
    image = run_loadgen(f"{url}/vectorize", work / "image.jpg", "image/jpeg", *one)
    options = ("--concurrency", str(args.clients), "--warmup", "3", "--duration", "10")
    load = run_loadgen(f"{url}/vectorize", work / "image.jpg", "image/jpeg", *options)
    for case, served, ours, theirs in (
        ("one /encode text, p50 ms", text, text["p50"], local["text p50"]),
        ("one /vectorize image, p50 ms", image, image["p50"], local["image p50"]),
        (
            f"/vectorize at {args.clients} clients vs model loop (best batch), img/s",
            load,
            load["throughput"],
            local["image"],
        ),
        (
            f"/vectorize at {args.clients} clients vs decode+preprocess+model loop, img/s",
            load,
            load["throughput"],
            local["image+decode"],
        ),
    ):
        errors = f"; {served['errors']} errors" if served["errors"] else ""
        ratio = f"{ours / theirs:.2f}x" if ours and theirs else "n/a"
        check.speed.append(("served vs in process", case, f"{ours:.1f} vs {theirs:.1f}", ratio))
        print(f"{case}: {ours:.1f} vs {theirs:.1f} ({ratio}){errors}", flush=True)


def interrogation(
    check: Check, url: str, models: dict[str, Path], cache: Path, args: argparse.Namespace
) -> None:
    """Each mode's served prompt vs 0.6.0's on ``args.device``, same models and tables."""
    library = library_interrogator(models, cache, args.device)
    image = make_image(7, (640, 480))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    blob = base64.b64encode(buffer.getvalue()).decode()
    flavors = {} if args.max_flavors is None else {"max_flavors": args.max_flavors}
    calls = {
        "fast": library.interrogate_fast,
        "classic": library.interrogate_classic,
        "negative": library.interrogate_negative,
        "best": library.interrogate,
    }
    for mode in MODES:
        start = time.perf_counter()
        expected = calls[mode](image, **flavors)
        library_s = time.perf_counter() - start
        body = {"image": {"img_blob": blob}, "mode": mode, **flavors}
        start = time.perf_counter()
        response = httpx.post(f"{url}/interrogate", json=body, timeout=900)
        served_s = time.perf_counter() - start
        ok = response.status_code == 200
        same = ok and response.json()["prompt"] == expected
        check.prompts.append((mode, library_s, served_s, same))
        print(f"{mode}: library {library_s:.2f} s, served {served_s:.2f} s, same {same}")
        if not ok:
            check.notes[f"{mode} prompts"] = f"served HTTP {response.status_code}: {response.text}"
        elif not same:
            check.notes[f"{mode} prompts"] = (
                f"served `{response.json()['prompt']}`; clip-interrogator `{expected}`"
            )


def report(check: Check, lines: dict[str, str], args: argparse.Namespace) -> str:
    parity_rows = [
        (backend, kind, n, f"{cosine:.6f}", f">= {MIN_COSINE}", "yes" if ok else "NO")
        for backend, kind, n, cosine, ok in check.parity
    ]
    prompt_rows = [
        (mode, f"{lib:.2f}", f"{srv:.2f}", f"{lib / srv:.2f}x", "yes" if same else "NO")
        for mode, lib, srv, same in check.prompts
    ]
    verdict = "FAILED: " + "; ".join(check.failed) if check.failed else "all parity checks passed"
    return (
        header("GPU check" + (" (dry run: CPU, tiny models)" if args.dry_run else ""), lines)
        + f"\n**{verdict}**\n\n"
        + markdown_table(
            ["backend", "inputs", "n", "min cosine, served vs fp32 in process", "goal", "met"],
            parity_rows,
        )
        + "\n"
        + markdown_table(
            ["mode", "clip-interrogator 0.6.0 (s)", "served (s)", "speed-up", "same prompt"],
            prompt_rows,
        )
        + "\n"
        + markdown_table(["where", "case", "measured", "ratio / figure"], check.speed)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="with open-clip/, hf-clip/ and blip/")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU (tiny models)")
    parser.add_argument("--list-wheels", action="store_true", help="print them and stop")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--probe-requests", type=int, default=50)
    parser.add_argument("--batch-sizes", default="1,8,32,128", help="in-process model loop")
    parser.add_argument("--ceiling-seconds", type=float, default=3, help="per batch size")
    parser.add_argument("--max-flavors", type=int, help="both sides (default: 0.6.0's)")
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, help="default benchmarks/results/gpu_check.md")
    args = parser.parse_args()
    if args.list_wheels:
        print("\n".join(wheels_needed()))
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is false); nothing run")
        return 2
    if args.models is None:
        parser.error("--models is required")
    args.device = "cpu" if args.dry_run else "cuda"
    total = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    models = {name: (args.models / name).resolve() for name in ("open-clip", "hf-clip", "blip")}
    jpeg = make_jpeg(work / "image.jpg")
    images = png_images(4)
    check = Check()
    timings: dict[str, float] = {}
    common = {"DEVICE": args.device, "ONNX_CACHE_DIR": str(work / "onnx")}

    start = time.perf_counter()
    hf = {**common, "CLIP_MODEL": str(models["hf-clip"]), "CAPTION_MODEL": "none"}
    local = in_process(check, hf, jpeg, args)
    gc.collect()  # the model goes before the servers start
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    timings["in process"] = time.perf_counter() - start

    start = time.perf_counter()
    with serve("transformers", hf, work, args.start_timeout) as (url, _):
        check.notes["server A GET /model"] = served_model(url)
        parity(check, "transformers", url, models["hf-clip"], images)
        served_speed(check, url, work, jpeg, local, args)
    timings["server A"] = time.perf_counter() - start

    start = time.perf_counter()
    spec = f"local-dir:{models['open-clip']}"
    oc = {
        **common,
        "CLIP_MODEL": spec,
        "CAPTION_MODEL": str(models["blip"]),
        "LABEL_CACHE_DIR": str(work / "served-tables"),
    }
    tables = seed_label_cache(work / "served-tables", spec, embedding_dim(models["open-clip"]))
    embedded = [(name, t.table.hash, t.embeds) for name, t in tables.by_name.items()]
    write_library_cache(work / "library-tables", LIBRARY_MODEL_NAME, embedded)
    with serve("open_clip", oc, work, args.start_timeout) as (url, log):
        check.notes["server B GET /model"] = served_model(url)
        parity(check, "open_clip", url, models["open-clip"], images)
        wait_for_tables(url, args.start_timeout)
        interrogation(check, url, models, work / "library-tables", args)
    if tables_built_in_log(log):
        check.notes["warning"] = "server B built label tables (its seeded cache was unused)"
    timings["server B"] = time.perf_counter() - start

    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (dry run)"
    timings["total"] = time.perf_counter() - total
    lines = {
        "device": device,
        "versions": versions({"cuda": str(torch.version.cuda)}),
        "models": ", ".join(str(path) for path in models.values()),
        "parity inputs": f"{len(TEXTS)} texts, {len(images)} 320x240 noise PNGs, one /encode",
        "interrogation": "one 640x480 noise PNG; label tables seeded (random unit vectors, "
        "float16), the same on both sides; max_flavors "
        + ("0.6.0's defaults" if args.max_flavors is None else str(args.max_flavors)),
        "step durations": ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
        **check.notes,
    }
    out = args.out or (work / "gpu_check-dry-run.md" if args.dry_run else None)
    write_results("gpu_check", report(check, lines, args), out)
    if check.failed:
        print("gpu_check: FAILED: " + "; ".join(check.failed), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
