"""Interrogation per mode: clip-interrogator 0.6.0 in process vs. the served API.

Both use the same open_clip and BLIP model directories, and the same image; the served
prompt is checked to equal the library's. Each side first starts (loads the models and
builds the label tables: timed, the server's from process start to its first answer), so
the mode timings are warm medians.

    python benchmarks/interrogation_modes.py [--models DIR] [--repeat 3]

Without --models, tiny random-weight models are generated (see clip_service.tiny_models).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import open_clip
import torch
from clip_interrogator import Config
from clip_interrogator import Interrogator as LibraryInterrogator
from transformers import AutoProcessor, BlipForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clip_service.tiny_models import make_all
from tests.conftest import make_image, served

MODES = ("fast", "classic", "negative", "best")


def library_interrogator(models: dict[str, Path], cache: str) -> LibraryInterrogator:
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{models['open-clip']}")
    config = Config(
        clip_model_name="ViT-B-32/bench",
        cache_path=cache,
        download_cache=False,
        device="cpu",
        quiet=True,
    )
    config.clip_model, config.clip_preprocess = model.eval(), preprocess
    config.caption_model = BlipForConditionalGeneration.from_pretrained(models["blip"]).eval()
    config.caption_processor = AutoProcessor.from_pretrained(models["blip"])
    return LibraryInterrogator(config)


def timed(call, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="dir with open-clip/ and blip/ subdirs")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-interrogate-"))
    models = (
        {"open-clip": args.models / "open-clip", "blip": args.models / "blip"}
        if args.models
        else make_all(work / "models")
    )
    image = make_image(7, (640, 480))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    blob = base64.b64encode(buffer.getvalue()).decode()

    start = time.perf_counter()
    library = library_interrogator(models, str(work / "library-cache"))
    library_build = time.perf_counter() - start
    library_calls = {
        "fast": library.interrogate_fast,
        "classic": library.interrogate_classic,
        "negative": library.interrogate_negative,
        "best": library.interrogate,
    }
    rows = []
    env = {
        "CLIP_MODEL": f"local-dir:{models['open-clip']}",
        "CAPTION_MODEL": str(models["blip"]),
        "LABEL_CACHE_DIR": str(work / "served-cache"),
    }
    start = time.perf_counter()  # the server builds its tables from start-up, in the background
    with served(work, timeout_s=600, **env) as url, httpx.Client(timeout=3600) as client:

        def serve(mode: str) -> str:
            body = {"image": {"img_blob": blob}, "mode": mode}
            response = client.post(f"{url}/interrogate", json=body)
            response.raise_for_status()
            return response.json()["prompt"]

        serve("fast")  # answers once the label tables are built
        served_build = time.perf_counter() - start
        for mode in MODES:
            library_s, expected = timed(lambda m=mode: library_calls[m](image), args.repeat)
            served_s, prompt = timed(lambda m=mode: serve(m), args.repeat)
            rows.append((mode, library_s, served_s, prompt == expected))

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}; models: {models['open-clip']}, {models['blip']}"
    )
    print(f"command: python benchmarks/interrogation_modes.py --repeat {args.repeat}\n")
    print("| step | clip-interrogator 0.6.0 (s) | served (s) | speed-up | same prompt |")
    print("|---|---|---|---|---|")
    print(
        f"| start: models + label tables (111,908 texts) | {library_build:.1f} | "
        f"{served_build:.1f} | "
        f"{library_build / served_build:.2f}x | |"
    )
    for mode, library_s, served_s, same in rows:
        print(
            f"| {mode} | {library_s:.2f} | {served_s:.2f} | {library_s / served_s:.2f}x | "
            f"{'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    main()
