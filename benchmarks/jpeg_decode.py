"""JPEG decode + CLIP preprocessing: full decode vs ``Image.draft`` (JPEG_DRAFT).

Generates photo-like JPEGs (smooth gradients, shapes, fine stripes, sensor-like noise;
quality 90, 4:2:0) at 12 MP and 1080p, decodes each through ``decode_image`` with and
without drafting, preprocesses with open_clip's ViT-B-32 transform and transformers'
CLIPImageProcessor, and compares the drafted pixels and the embeddings of a full-size
random-weight ViT-B-32 with the full decode. Writes ``results/jpeg_decode.md``.

    python benchmarks/jpeg_decode.py [--rounds 5]
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import open_clip
import torch
from harness import Scenario, best_of, table
from PIL import Image, ImageDraw, ImageFilter
from transformers import CLIPImageProcessor

from clip_service.inputs.images import decode_image
from clip_service.models.image_runtime import min_cosine
from clip_service.models.preprocess import PreprocessConfig, build_preprocessor

SIZES = {"12 MP": (4000, 3000), "1080p": (1920, 1080)}
# Drafting targets as multiples of the 224 px model input; None is the full decode.
DRAFTS: list[int | None] = [None, 1, 2, 4]


def scene(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: gradient sky, blurred shapes, fine stripes and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (y / height)[..., None]
    base = top * (1 - t) + bottom * t + 30 * np.sin(x / width * 6.0)[..., None]
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(0.05, 0.4) * width, rng.uniform(0.05, 0.4) * height
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = (x0, y0, x0 + w, y0 + h)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    image = image.filter(ImageFilter.GaussianBlur(width / 800))
    pixels = np.asarray(image).astype(np.float32)
    stripes = 12 * np.sin(x / 3.0 + y / 5.0)[..., None] * (x > width / 2)[..., None]
    pixels += stripes + rng.normal(0, 6, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    scenario = Scenario("jpeg_decode", __doc__, serves=False)
    scenario.arg("--rounds", type=int, default=5)
    scenario.arg("--images", type=int, default=2, help="images per size")
    args = scenario.parse()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    preprocessors = {
        "open_clip": build_preprocessor(
            PreprocessConfig(kind="open_clip", params=dict(model.visual.preprocess_cfg))
        ),
        "transformers": build_preprocessor(
            PreprocessConfig(kind="transformers", params=CLIPImageProcessor().to_dict())
        ),
    }

    rows = []
    for size_name, (width, height) in SIZES.items():
        jpegs = [scene(width, height, seed) for seed in range(args.images)]
        for lib, preprocess in preprocessors.items():
            pixels: dict[int | None, list[np.ndarray]] = {}
            times: dict[int | None, list[float]] = {}
            for draft in DRAFTS:
                draft_to = None if draft is None else draft * 224

                def run(data: bytes, draft_to: int | None = draft_to, preprocess=preprocess):
                    return preprocess(decode_image(data, "b", max_pixels=10**9, draft_to=draft_to))

                timed = [best_of(lambda data=data: run(data), args.rounds) for data in jpegs]
                times[draft] = [seconds * 1000 for seconds, _ in timed]
                pixels[draft] = [result for _, result in timed]
            with torch.inference_mode():
                embed = {
                    d: model.encode_image(torch.from_numpy(np.stack(p))).numpy()
                    for d, p in pixels.items()
                }
            for draft in DRAFTS:
                diff = np.abs(np.stack(pixels[draft]) - np.stack(pixels[None]))
                draft_to = None if draft is None else draft * 224
                decoded = decode_image(jpegs[0], "b", max_pixels=10**9, draft_to=draft_to)
                decode = "full decode" if draft is None else f"draft to {draft}x ({draft_to} px)"
                rows.append(
                    (size_name, lib, decode, f"{decoded.width}x{decoded.height}",
                     f"{np.median(times[draft]):.1f}", f"{diff.mean():.4f} / {diff.max():.3f}",
                     f"{min_cosine(embed[draft], embed[None]):.6f}")
                )  # fmt: skip

    lines = {
        "images": f"{args.images} generated JPEGs per size (quality 90), best of {args.rounds} "
        "per image, median over images, one thread per image",
        "differences": "pixels in normalised units (mean / max abs); cosine: full-size "
        "random-weight ViT-B-32 image embeddings vs the full decode (min over images)",
    }
    head = ["image", "preprocessing", "decode", "decoded size", "ms decode+preprocess"]
    head += ["pixel diff", "embedding cos"]
    scenario.write("JPEG decode + CLIP preprocessing (224 px)", lines, table(head, rows))


if __name__ == "__main__":
    main()
