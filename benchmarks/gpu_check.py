"""The GPU check: CUDA parity, interrogation prompts vs clip-interrogator 0.6.0, and served
vs in-process speed, in one run (``benchmarks/gpu_check.sh`` prepares Python and models).

Steps, each server started and stopped in turn (load from ``benchmarks/loadgen.py``):

1. in process (transformers format, the served model code): one text and one image at a
   time (latency), and ``harness.model_loop``'s model loop per batch size;
2. server A, transformers format, CLIP only: parity (below), then one text and one image
   one after another and ``/vectorize`` at ``--clients`` clients;
3. server B, open_clip format (the same weights) with BLIP and label tables seeded on both
   sides (``harness.seed_label_cache``, handed to the library in its cache format): parity,
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
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from harness import (
    TEXT,
    Scenario,
    Server,
    embedding_dim,
    latency,
    load,
    make_jpeg,
    model_loop,
    production_encoder,
    seed_label_cache,
    table,
    times,
    write,
)
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from clip_service.inputs.images import decode_image
from clip_service.models.image_runtime import min_cosine
from clip_service.models.preprocess import build_preprocessor
from clip_service.testing.images import image_bytes, make_image
from clip_service.testing.library_cache import write_library_cache
from clip_service.testing.upstream import (
    LIBRARY_MODEL_NAME,
    MODES,
    library_interrogator,
    open_clip_embeddings,
    transformers_embeddings,
)

MIN_COSINE = 0.999
TEXTS = (
    TEXT,
    "a dog",
    "an oil painting of a lighthouse at dusk, by a famous artist, trending on artstation",
    "two people riding bicycles along a canal in the rain",
)
# Packages the GPU image already holds: never carried as wheels (its CUDA builds are used).
LISTED = (Path(__file__).parent / "gpu_image_packages.txt").read_text().splitlines()
GPU_IMAGE_PACKAGES = frozenset(line for line in LISTED if line and not line.startswith("#"))
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

    @property
    def failed(self) -> list[str]:
        bad = [f"{b} {kind} cosine {c:.5f}" for b, kind, _, c, ok in self.parity if not ok]
        return bad + [f"{mode} prompt differs" for mode, _, _, same in self.prompts if not same]


def served_vectors(url: str, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(texts, images) raw embeddings from one ``/encode`` request."""
    items = [{"text": t} for t in TEXTS]
    items += [{"img_blob": base64.b64encode(png).decode()} for png in images]
    response = httpx.post(f"{url}/encode", json=items, timeout=300)
    response.raise_for_status()
    vectors = np.asarray(response.json(), dtype=np.float32)
    return vectors[: len(TEXTS)], vectors[len(TEXTS) :]


def parity(check: Check, backend: str, url: str, model_dir: Path, images: list[bytes]) -> None:
    """Served (device, default precision) vs the library's fp32 on the CPU; >= MIN_COSINE."""
    served = served_vectors(url, images)
    upstream = open_clip_embeddings if backend == "open_clip" else transformers_embeddings
    reference = upstream(model_dir, TEXTS, images)
    for kind, ours, theirs in zip(("texts", "images"), served, reference, strict=True):
        cosine = min_cosine(ours, theirs)
        check.parity.append((backend, kind, len(ours), cosine, cosine >= MIN_COSINE))
        print(f"parity {backend} {kind}: min cosine {cosine:.6f}", flush=True)


def served_model(server: Server) -> str:
    info = server.model()
    return ", ".join(f"{k} {info[k]}" for k in ("backend", "device", "dtype", "precision"))


def in_process(
    check: Check, settings: dict[str, str], jpeg: bytes, args: argparse.Namespace
) -> dict[str, float]:
    """One text, one image, and the model loop in process; their figures by name."""
    model = production_encoder(settings)
    preprocess = build_preprocessor(model.info().preprocess)
    pixels = preprocess(decode_image(jpeg, "body", max_pixels=10**8))[None]
    text = latency(lambda: model.encode_texts([TEXT]), args.probe_requests)["p50"]
    image = latency(lambda: model.encode_images(pixels), args.probe_requests)["p50"]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows, best = model_loop(model, jpeg, sizes, args.ceiling_seconds)
    for loop, kind, batch, rate in rows:
        check.speed.append(("in process", f"{loop}, {kind}", batch, f"{rate:.1f}/s"))
    return {"text p50": text, "image p50": image, **best}


def served_speed(
    check: Check, url: str, work: Path, jpeg: bytes, local: dict[str, float], args
) -> None:
    """One text and one image one after another, then /vectorize at ``--clients``."""
    text_body, image_body = (
        write(work / "text.json", [{"text": TEXT}]),
        write(work / "image.jpg", jpeg),
    )
    n = args.probe_requests
    text = load(f"{url}/encode", text_body, "application/json", concurrency=1, requests=n)
    image = load(f"{url}/vectorize", image_body, "image/jpeg", concurrency=1, requests=n)
    loop = load(
        f"{url}/vectorize",
        image_body,
        "image/jpeg",
        concurrency=args.clients,
        warmup=3,
        duration=10,
    )
    for case, served, ours, theirs in (
        ("one /encode text, p50 ms", text, text["p50"], local["text p50"]),
        ("one /vectorize image, p50 ms", image, image["p50"], local["image p50"]),
        (f"/vectorize at {args.clients} clients vs model loop (best batch), img/s",
         loop, loop["throughput"], local["image"]),
        (f"/vectorize at {args.clients} clients vs decode+preprocess+model loop, img/s",
         loop, loop["throughput"], local["image+decode"]),
    ):  # fmt: skip
        errors = f"; {served['errors']} errors" if served["errors"] else ""
        ratio = times(ours, theirs)
        check.speed.append(("served vs in process", case, f"{ours:.1f} vs {theirs:.1f}", ratio))
        print(f"{case}: {ours:.1f} vs {theirs:.1f} ({ratio}){errors}", flush=True)


def interrogation(
    check: Check, url: str, models: dict[str, Path], cache: Path, scenario: Scenario
) -> None:
    """Each mode's served prompt vs 0.6.0's on ``args.device``, same models and tables."""
    args = scenario.args
    library = library_interrogator(models, cache, args.device)
    image = make_image(7, (640, 480))
    blob = base64.b64encode(image_bytes(image)).decode()
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
            scenario.notes[f"{mode} prompts"] = (
                f"served HTTP {response.status_code}: {response.text}"
            )
        elif not same:
            scenario.notes[f"{mode} prompts"] = (
                f"served `{response.json()['prompt']}`; clip-interrogator `{expected}`"
            )


def report(check: Check) -> list[str]:
    """The verdict, then the parity, prompt and speed tables."""
    parity_rows = [
        (backend, kind, n, f"{cosine:.6f}", f">= {MIN_COSINE}", "yes" if ok else "NO")
        for backend, kind, n, cosine, ok in check.parity
    ]
    prompt_rows = [
        (mode, f"{lib:.2f}", f"{srv:.2f}", f"{lib / srv:.2f}x", "yes" if same else "NO")
        for mode, lib, srv, same in check.prompts
    ]
    verdict = "FAILED: " + "; ".join(check.failed) if check.failed else "all parity checks passed"
    return [
        f"**{verdict}**\n",
        table(
            ["backend", "inputs", "n", "min cosine, served vs fp32 in process", "goal", "met"],
            parity_rows,
        ),
        table(
            ["mode", "clip-interrogator 0.6.0 (s)", "served (s)", "speed-up", "same prompt"],
            prompt_rows,
        ),
        table(["where", "case", "measured", "ratio / figure"], check.speed),
    ]


def main() -> int:
    scenario = Scenario("gpu_check", __doc__, models=None)
    scenario.arg("--dry-run", action="store_true", help="on the CPU (tiny models)")
    scenario.arg("--list-wheels", action="store_true", help="print them and stop")
    scenario.arg("--clients", type=int, default=32)
    scenario.arg("--probe-requests", type=int, default=50)
    scenario.arg("--batch-sizes", default="1,8,32,128", help="in-process model loop")
    scenario.arg("--ceiling-seconds", type=float, default=3, help="per batch size")
    scenario.arg("--max-flavors", type=int, help="both sides (default: 0.6.0's)")
    scenario.parser.set_defaults(start_timeout=600)
    args, work = scenario.parse(), scenario.work
    if args.list_wheels:
        print("\n".join(wheels_needed()))
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is false); nothing run")
        return 2
    if args.models is None:
        scenario.parser.error("--models is required")
    args.device, started = ("cpu" if args.dry_run else "cuda"), time.perf_counter()
    if args.dry_run and args.out is None:
        args.out = work / "gpu_check-dry-run.md"
    models = {name: scenario.model_dir(name) for name in ("open-clip", "hf-clip", "blip")}
    jpeg = make_jpeg()
    images = [image_bytes(make_image(seed, (320, 240))) for seed in range(4)]  # lossless
    check = Check()
    common = {"DEVICE": args.device, "ONNX_CACHE_DIR": str(work / "onnx"), **scenario.server_env()}

    hf = {**common, "CLIP_MODEL": str(models["hf-clip"]), "CAPTION_MODEL": "none"}
    with scenario.step("in process"):
        local = in_process(check, hf, jpeg, args)
        gc.collect()  # the model goes before the servers start
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    with scenario.step("server A"), scenario.serve("transformers", hf) as server:
        scenario.notes["server A GET /model"] = served_model(server)
        parity(check, "transformers", server.url, models["hf-clip"], images)
        served_speed(check, server.url, work, jpeg, local, args)

    spec = f"local-dir:{models['open-clip']}"
    oc = {**common, "CLIP_MODEL": spec, "CAPTION_MODEL": str(models["blip"])}
    oc["LABEL_CACHE_DIR"] = str(work / "served-tables")
    with scenario.step("server B"):
        tables = seed_label_cache(work / "served-tables", spec, embedding_dim(models["open-clip"]))
        embedded = [(name, t.table.hash, t.embeds) for name, t in tables.by_name.items()]
        write_library_cache(work / "library-tables", LIBRARY_MODEL_NAME, embedded)
        with scenario.serve("open_clip", oc) as server:
            scenario.notes["server B GET /model"] = served_model(server)
            parity(check, "open_clip", server.url, models["open-clip"], images)
            server.wait_for_tables(args.start_timeout)
            interrogation(check, server.url, models, work / "library-tables", scenario)
        if server.built_tables():
            scenario.notes["warning"] = "server B built label tables (its seeded cache was unused)"

    scenario.steps["total"] = time.perf_counter() - started
    lines = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "CPU (dry run)",
        "cuda": str(torch.version.cuda),
        "models": ", ".join(str(path) for path in models.values()),
        "parity inputs": f"{len(TEXTS)} texts, {len(images)} 320x240 noise PNGs, one /encode",
        "interrogation": "one 640x480 noise PNG; label tables seeded (random unit vectors, "
        "float16), the same on both sides; max_flavors "
        + ("0.6.0's defaults" if args.max_flavors is None else str(args.max_flavors)),
    }
    title = "GPU check" + (" (dry run: CPU, tiny models)" if args.dry_run else "")
    scenario.write(title, lines, *report(check))
    if check.failed:
        print("gpu_check: FAILED: " + "; ".join(check.failed), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
