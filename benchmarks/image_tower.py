"""CLIP tower speed and accuracy per CLIP_PRECISION / IMAGE_RUNTIME, in-process on CPU.

Loads a full-size random-weight open_clip model (the speed of real weights) once per
configuration through ``load_clip_model`` (the served code path, ONNX export included),
then times the image tower side by side, interleaved, best of N rounds, and compares image
and text embeddings with the fp32 eager model (cosine). Writes ``results/image_tower.md``.

    python benchmarks/image_tower.py [--model ViT-B-32] [--batches 1 8] [--rounds 4]
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from harness import Scenario, table

from clip_service.models.clip import ClipModel
from clip_service.models.factory import load_clip_model
from clip_service.models.image_runtime import min_cosine
from clip_service.models.specs import ClipSpec

TEXTS = [
    "a photo of a cat",
    "a watercolor painting of a lighthouse at dusk, trending on artstation",
    "diagram",
    "two people riding bicycles along a canal in amsterdam in the rain",
] * 4

# (label, CLIP_PRECISION, IMAGE_RUNTIME)
CONFIGS = [
    ("fp32 torch (eager)", "fp32", "torch"),
    ("fp32 onnxruntime", "fp32", "onnx"),
    ("bf16 torch (weights converted)", "bf16", "torch"),
    ("int8 onnxruntime (dynamic quant.)", "int8", "onnx"),
]


def load(model: str, precision: str, runtime: str, cache: Path) -> tuple[ClipModel, float]:
    torch.manual_seed(0)  # the same random weights for every configuration
    start = time.perf_counter()
    clip = load_clip_model(
        ClipSpec(model, "open_clip", model), "cpu", True, precision, runtime, cache
    )
    return clip, time.perf_counter() - start


def torch_int8_tower(fp32: ClipModel) -> Callable[[np.ndarray], np.ndarray]:
    """torch's dynamic quantisation of the image tower's Linear layers (not offered: compared)."""
    from torch.ao.quantization import quantize_dynamic

    visual = quantize_dynamic(fp32.model.visual, {torch.nn.Linear}, dtype=torch.qint8)

    @torch.inference_mode()
    def run(pixels: np.ndarray) -> np.ndarray:
        return visual(torch.from_numpy(pixels)).numpy()

    return run


def main() -> None:
    scenario = Scenario("image_tower", __doc__, serves=False)
    scenario.arg("--model", default="ViT-B-32", help="open_clip architecture")
    scenario.arg("--batches", type=int, nargs="+", default=[1, 8])
    scenario.arg("--rounds", type=int, default=4)
    args = scenario.parse()
    warnings.filterwarnings("ignore")

    rng = np.random.default_rng(0)
    runs: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    rows: dict[str, dict[str, object]] = {}
    cache = scenario.work / "onnx"
    for label, precision, runtime in CONFIGS:
        clip, load_s = load(args.model, precision, runtime, cache)
        if not runs:
            reference = clip
            size = int(clip.model.visual.image_size[0])
            check = rng.standard_normal((16, 3, size, size), dtype=np.float32)
            expected_images = clip.encode_images(check)
            expected_texts = clip.encode_texts(TEXTS)
        info = clip.info()
        runs[label] = clip.encode_images
        rows[label] = {
            "runtime": f"{info.image_runtime} / {info.precision}",
            "load": load_s,
            "image cos": min_cosine(clip.encode_images(check), expected_images),
            "text cos": min_cosine(clip.encode_texts(TEXTS), expected_texts),
        }
    _, reload_s = load(args.model, "fp32", "onnx", cache)
    rows["fp32 onnxruntime"]["load"] = (
        f"{rows['fp32 onnxruntime']['load']:.1f} (cached: {reload_s:.1f})"
    )
    label = "int8 torch quantize_dynamic (not offered)"
    runs[label] = torch_int8_tower(reference)
    rows[label] = {
        "runtime": "torch / int8",
        "load": "-",
        "image cos": min_cosine(runs[label](check), expected_images),
        "text cos": "-",
    }

    speeds: dict[tuple[str, int], float] = {}
    for batch in args.batches:
        pixels = (
            check[:batch] if batch <= len(check) else np.resize(check, (batch, *check.shape[1:]))
        )
        best = dict.fromkeys(runs, float("inf"))
        for run in runs.values():
            run(pixels)  # warm-up
        for _ in range(args.rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                run(pixels)
                best[name] = min(best[name], time.perf_counter() - start)
        for name in runs:
            speeds[name, batch] = batch / best[name]

    base, cells = CONFIGS[0][0], []
    for name, row in rows.items():
        load_cell = row["load"] if isinstance(row["load"], str) else f"{row['load']:.1f}"
        cos = [
            f"{row[k]:.6f}" if isinstance(row[k], float) else row[k]
            for k in ("image cos", "text cos")
        ]
        speed = [
            f"{speeds[name, b]:.1f} ({speeds[name, b] / speeds[base, b]:.2f}x)"
            for b in args.batches
        ]
        cells.append([name, row["runtime"], load_cell, *cos, *speed])
    head = ["configuration", "runtime / precision", "load s", "min image cos", "min text cos"]
    head += [f"img/s b{b} (x eager)" for b in args.batches]
    lines = {
        "model": f"{args.model} (open_clip, random weights), CPU",
        "threads": str(torch.get_num_threads()),
        "onnxruntime": onnxruntime.__version__,
        "timing": f"best of {args.rounds} interleaved rounds",
    }
    scenario.write(f"Image tower, {args.model}: precisions and runtimes", lines, table(head, cells))


if __name__ == "__main__":
    main()
