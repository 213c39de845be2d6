"""Interrogation per mode: clip-interrogator 0.6.0 in process vs. the served API.

Both use the same open_clip and BLIP model directories, and the same image; the served
prompt is checked to equal the library's. Each side first starts (loads the models and its
label tables: timed, the server's from process start to its first answer), so the mode
timings are warm medians.

    python benchmarks/interrogation_modes.py [--models DIR] [--repeat 3]
    python benchmarks/interrogation_modes.py --models /work/bench-models \
        --label-tables seeded --max-flavors 2 --repeat 1          # full size, bounded

Without --models, tiny random-weight models are generated (see clip_service.tiny_models);
``benchmarks/full_size_models.py`` writes full-size ViT-B-32 + BLIP-base ones.

Bounding the full-size run: the library encodes every chain candidate at 77 tokens, ~2,048
per chain step, so its best and negative modes take minutes per step on a CPU, and
building its label tables takes about an hour. ``--label-tables seeded`` gives both sides
the same precomputed table embeddings (seeded random unit vectors rounded to float16, in
each side's own cache format: with random weights, real ones mean no more, and the
contents do not change the cost), so neither builds; ``--max-flavors`` caps every mode's
flavor count (the chain steps) on both sides alike.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import open_clip
from clip_interrogator import Config
from clip_interrogator import Interrogator as LibraryInterrogator
from safetensors.numpy import save_file
from transformers import AutoProcessor, BlipForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (
    bentoml_command,
    bentoml_env,
    header,
    markdown_table,
    model_answer,
    parse_env,
    seed_label_cache,
    server_process,
    tables_built_in_log,
    versions,
    write_results,
)
from clip_service.interrogation import LabelTables
from clip_service.tiny_models import make_all
from tests.conftest import free_port, make_image

MODES = ("fast", "classic", "negative", "best")
# Names 0.6.0's tokenizer (ViT-B-32's standard 77-token BPE, the models' own) and its
# cache files: {cache_path}/ViT-B-32_bench_{table}.safetensors.
LIBRARY_MODEL_NAME = "ViT-B-32/bench"


def library_interrogator(models: dict[str, Path], cache: Path) -> LibraryInterrogator:
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{models['open-clip']}")
    config = Config(
        clip_model_name=LIBRARY_MODEL_NAME,
        cache_path=str(cache),
        download_cache=False,
        device="cpu",
        quiet=True,
    )
    # 0.6.0 takes injected models as plain (non-init) attributes of its Config.
    config.clip_model, config.clip_preprocess = model.eval(), preprocess
    config.caption_model = BlipForConditionalGeneration.from_pretrained(models["blip"]).eval()
    config.caption_processor = AutoProcessor.from_pretrained(models["blip"])
    return LibraryInterrogator(config)


def write_library_cache(tables: LabelTables, cache: Path) -> None:
    """``tables`` in 0.6.0's cache format (float16 embeds + the label hash as int8 codes)."""
    cache.mkdir(parents=True, exist_ok=True)
    name = LIBRARY_MODEL_NAME.replace("/", "_").replace("@", "_")
    for table_name, embedded in tables.by_name.items():
        tensors = {
            "embeds": embedded.embeds.astype(np.float16),  # exact: they are float16 values
            "hash": np.array([ord(c) for c in embedded.table.hash], dtype=np.int8),
        }
        save_file(tensors, cache / f"{name}_{table_name}.safetensors")


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
    parser.add_argument(
        "--label-tables",
        choices=("build", "seeded"),
        default="build",
        help="build: each side builds its own (timed in 'start'); seeded: both load the "
        "same precomputed embeddings",
    )
    parser.add_argument("--max-flavors", type=int, help="on both sides (default: 0.6.0's)")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VAL")
    parser.add_argument("--start-timeout", type=float, default=7200)
    parser.add_argument(
        "--out", type=Path, help="default benchmarks/results/interrogation_modes.md"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-interrogate-"))
    models = (
        {"open-clip": args.models / "open-clip", "blip": args.models / "blip"}
        if args.models
        else make_all(work / "models")
    )
    models = {name: path.resolve() for name, path in models.items()}
    image = make_image(7, (640, 480))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    blob = base64.b64encode(buffer.getvalue()).decode()
    clip_spec = f"local-dir:{models['open-clip']}"
    settings = {
        "CLIP_MODEL": clip_spec,
        "CAPTION_MODEL": str(models["blip"]),
        "LABEL_CACHE_DIR": str(work / "served-cache"),
        "REQUEST_TIMEOUT_S": str(args.start_timeout),  # the first answer waits for the tables
        **parse_env(args.server_env),
    }
    if args.label_tables == "seeded":
        dim = open_clip.create_model(f"local-dir:{models['open-clip']}").text_projection.shape[1]
        tables = seed_label_cache(Path(settings["LABEL_CACHE_DIR"]), clip_spec, dim)
        write_library_cache(tables, work / "library-cache")
    flavors = {} if args.max_flavors is None else {"max_flavors": args.max_flavors}

    start = time.perf_counter()
    library = library_interrogator(models, work / "library-cache")
    library_start = time.perf_counter() - start
    library_calls = {
        "fast": library.interrogate_fast,
        "classic": library.interrogate_classic,
        "negative": library.interrogate_negative,
        "best": library.interrogate,
    }
    rows = []
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = bentoml_env(work / "bentoml", settings)
    start = time.perf_counter()  # the server loads or builds its tables from start-up
    with (
        server_process(
            "ours",
            bentoml_command(port),
            f"{url}/readyz",
            work,
            env=env,
            timeout_s=args.start_timeout,
        ) as log,
        httpx.Client(timeout=args.start_timeout) as client,
    ):

        def serve(mode: str) -> str:
            body = {"image": {"img_blob": blob}, "mode": mode, **flavors}
            response = client.post(f"{url}/interrogate", json=body)
            response.raise_for_status()
            return response.json()["prompt"]

        serve("fast")  # answers once the label tables are loaded or built
        served_start = time.perf_counter() - start
        model = model_answer(url)
        for mode in MODES:
            library_s, expected = timed(
                lambda m=mode: library_calls[m](image, **flavors), args.repeat
            )
            print(f"{mode}: clip-interrogator {library_s:.2f} s", flush=True)
            served_s, prompt = timed(lambda m=mode: serve(m), args.repeat)
            print(f"{mode}: served {served_s:.2f} s", flush=True)
            rows.append((mode, library_s, served_s, prompt == expected))
    built = tables_built_in_log(log)

    tables_line = (
        "each side builds its own (111,908 texts) during 'start'"
        if args.label_tables == "build"
        else "the same precomputed embeddings on both sides (seeded random unit vectors, "
        "float16), loaded from each side's cache"
        + ("; WARNING: the server built tables anyway" if built else "")
    )
    lines = {
        "versions": versions(),
        "models": f"{models['open-clip']} (open_clip), {models['blip']} (BLIP), the same "
        "directories on both sides; one 640x480 noise image (PNG)",
        "label tables": tables_line,
        "flavors": f"max_flavors={args.max_flavors} on both sides"
        if args.max_flavors is not None
        else "0.6.0's defaults (max_flavors 32 best/fast/negative, 3 classic)",
        "repeats": f"median of {args.repeat} per mode and side, after start-up",
        "our settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
        "ours GET /model": f"`{model}`",
    }
    start_label = (
        "start: models + label tables (111,908 texts)"
        if args.label_tables == "build"
        else "start: models, label tables from cache"
    )
    table_rows = [
        (
            start_label,
            f"{library_start:.1f}",
            f"{served_start:.1f}",
            f"{library_start / served_start:.2f}x",
            "",
        )
    ]
    for mode, library_s, served_s, same in rows:
        table_rows.append(
            (
                mode,
                f"{library_s:.2f}",
                f"{served_s:.2f}",
                f"{library_s / served_s:.2f}x",
                "yes" if same else "NO",
            )
        )
    best_mode = next(r for r in rows if r[0] == "best")
    goal = f"best mode: {best_mode[1] / best_mode[2]:.2f}x faster served (goal >= 10x)\n"
    table = markdown_table(
        ["step", "clip-interrogator 0.6.0 (s)", "served (s)", "speed-up", "same prompt"], table_rows
    )
    text = header("Interrogation per mode: served vs. clip-interrogator 0.6.0 in process", lines)
    write_results("interrogation_modes", text + "\n" + table + "\n" + goal, args.out)


if __name__ == "__main__":
    main()
