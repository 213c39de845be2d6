"""Peak memory of one image request's per-image work, on the largest images the limits take.

Each image goes through ``decode_image`` and both libraries' 224 px preprocessing
(open_clip's and transformers', as configured by the generated tiny models; full-size
ViT-B-32 preprocessing is the same) in a fresh ``clip_service.testing.decode_worker``
process, which reports its peak RSS growth (VmHWM reset, freed heap handed back first).
Images: blank (so a PNG of 40 Mpx is ~0.2 MB and passes ``MAX_BODY_BYTES``) at
``MAX_IMAGE_PIXELS`` in every mode family, at the aspect-ratio limit with as many pixels as
allowed, and with a 1-pixel shorter side at the aspect-ratio limit (the preprocessing scales
it up to 224 px).

    python benchmarks/image_memory.py [--max-pixels 40000000]
"""

from __future__ import annotations

from harness import Scenario, table

from clip_service.inputs.images import MAX_ASPECT_RATIO
from clip_service.settings import Settings
from clip_service.testing.decode_worker import (
    DecodeWorker,
    blank_image,
    largest_images,
    preprocess_configs,
)
from clip_service.testing.tiny_models import make_all


def main() -> None:
    scenario = Scenario("image_memory", __doc__, serves=False)
    scenario.arg("--max-pixels", type=int, default=Settings().max_image_pixels)
    args = scenario.parse()
    configs = preprocess_configs(make_all(scenario.work / "tiny-models"))
    rows = []
    for name, (mode, size) in largest_images(args.max_pixels).items():
        config = {
            "max_pixels": args.max_pixels,
            "preprocess": configs,
            "warm_up": [blank_image(mode, (64, 64)).hex()],
        }
        worker = DecodeWorker(config, timeout_s=600)
        try:
            data = blank_image(mode, size)
            result = worker.run(data)
        finally:
            worker.stop()
        if result["outcome"] != "ok":
            raise SystemExit(f"{name}: {result}")
        growth, pixels = result["peak_growth_bytes"], size[0] * size[1]
        rows.append(
            [name, f"{pixels:,}", f"{len(data) / 2**10:,.0f}", f"{growth / 2**20:,.0f}",
             f"{growth / pixels:,.1f}", f"{result['seconds']:.1f}"]
        )  # fmt: skip
    lines = {
        "limits": f"MAX_IMAGE_PIXELS {args.max_pixels:,}, aspect ratio {MAX_ASPECT_RATIO}:1",
        "work": "decode_image, then open_clip's and transformers' 224 px preprocessing",
    }
    head = ["image", "pixels", "body KiB", "peak growth MiB", "bytes per pixel", "seconds"]
    title = "Peak memory of one image's decoding and preprocessing"
    scenario.write(title, lines, table(head, rows))


if __name__ == "__main__":
    main()
