"""Interrogation per mode: clip-interrogator 0.6.0 in process vs. the served API.

Both use the same open_clip and BLIP model directories, and the same image; the served
prompt is checked to equal the library's. Each side first starts (loads the models and its
label tables: timed, the server's from process start to its first answer), so the mode
timings are warm medians.

    python benchmarks/interrogation_modes.py [--models DIR] [--repeat 3]
    python benchmarks/interrogation_modes.py --models /work/bench-models \
        --label-tables seeded --max-flavors 2 --repeat 1          # full size, bounded

Without --models, tiny random-weight models are generated (see clip_service.testing.tiny_models);
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
import open_clip
import torch
from clip_interrogator import Config
from clip_interrogator import Interrogator as LibraryInterrogator
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
    wait_for_tables,
    write_results,
)
from clip_service.testing.tiny_models import make_all
from tests.conftest import free_port, make_image, write_library_cache

MODES = ("fast", "classic", "negative", "best")
# Names 0.6.0's tokenizer (ViT-B-32's standard 77-token BPE, the models' own) and its
# cache files: {cache_path}/ViT-B-32_bench_{table}.safetensors.
LIBRARY_MODEL_NAME = "ViT-B-32/bench"


def library_interrogator(
    models: dict[str, Path], cache: Path, device: str = "cpu"
) -> LibraryInterrogator:
    """0.6.0's ``Interrogator`` on the given model directories, with the models in the
    precision it loads its own in on ``device`` (fp16 on CUDA, fp32 elsewhere)."""
    precision = "fp16" if device == "cuda" else "fp32"
    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{models['open-clip']}", precision=precision, device=device
    )
    config = Config(
        clip_model_name=LIBRARY_MODEL_NAME,
        cache_path=str(cache),
        download_cache=False,
        device=device,
        quiet=True,
    )
    # 0.6.0 takes injected models as plain (non-init) attributes of its Config.
    config.clip_model, config.clip_preprocess = model.eval(), preprocess
    dtype = torch.float16 if device == "cuda" else torch.float32
    blip = BlipForConditionalGeneration.from_pretrained(models["blip"], dtype=dtype)
    config.caption_model = blip.eval().to(device)
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
        embedded = [(name, t.table.hash, t.embeds) for name, t in tables.by_name.items()]
        write_library_cache(work / "library-cache", LIBRARY_MODEL_NAME, embedded)
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

        def serve(mode: str) -> str | None:
            """The served prompt; None if the server failed (recorded in ``failures``)."""
            body = {"image": {"img_blob": blob}, "mode": mode, **flavors}
            response = client.post(f"{url}/interrogate", json=body)
            if response.status_code != 200:
                failures[mode] = f"HTTP {response.status_code}: {response.text[:160]}"
                return None
            return response.json()["prompt"]

        failures: dict[str, str] = {}
        wait_for_tables(url, args.start_timeout)  # loaded, or built in the background
        if serve("fast") is None:
            raise RuntimeError(f"the first interrogation failed: {failures['fast']}")
        served_start = time.perf_counter() - start
        model = model_answer(url)
        for mode in MODES:
            library_s, expected = timed(
                lambda m=mode: library_calls[m](image, **flavors), args.repeat
            )
            print(f"{mode}: clip-interrogator {library_s:.2f} s", flush=True)
            served_s, prompt = timed(lambda m=mode: serve(m), args.repeat)
            print(f"{mode}: served {served_s:.2f} s", flush=True)
            same = "yes" if prompt == expected else "NO"
            rows.append(
                (
                    mode,
                    library_s,
                    served_s,
                    f"failed ({failures[mode]})" if prompt is None else same,
                )
            )
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
        speed_up = "n/a" if same.startswith("failed") else f"{library_s / served_s:.2f}x"
        table_rows.append((mode, f"{library_s:.2f}", f"{served_s:.2f}", speed_up, same))
    _, library_best, served_best, best_same = next(r for r in rows if r[0] == "best")
    goal = (
        f"best mode: served request {best_same} (goal >= 10x faster)\n"
        if best_same.startswith("failed")
        else f"best mode: {library_best / served_best:.2f}x faster served (goal >= 10x)\n"
    )
    table = markdown_table(
        ["step", "clip-interrogator 0.6.0 (s)", "served (s)", "speed-up", "same prompt"], table_rows
    )
    text = header("Interrogation per mode: served vs. clip-interrogator 0.6.0 in process", lines)
    write_results("interrogation_modes", text + "\n" + table + "\n" + goal, args.out)


if __name__ == "__main__":
    main()
