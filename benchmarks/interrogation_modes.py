"""Interrogation per mode: clip-interrogator 0.6.0 in process vs. the served API.

Both use the same open_clip and BLIP model directories, and the same image; the served
prompt is checked to equal the library's. Each side first starts (loads the models and its
label tables: timed, the server's from process start to its first answer), so the mode
timings are warm medians.

    python benchmarks/interrogation_modes.py [--models DIR] [--repeat 3]
    python benchmarks/interrogation_modes.py --models /work/bench-models \
        --label-tables seeded --max-flavors 2 --repeat 1          # full size, bounded

Without --models, tiny random-weight models are generated (see clip_service.testing.tiny_models);
``clip_service/testing/full_size_models.py`` writes full-size ViT-B-32 + BLIP-base ones.

Bounding the full-size run: the library encodes every chain candidate at 77 tokens, ~2,048
per chain step, so its best and negative modes take minutes per step on a CPU, and
building its label tables takes about an hour. ``--label-tables seeded`` gives both sides
the same precomputed table embeddings (seeded random unit vectors rounded to float16, in
each side's own cache format: with random weights, real ones mean no more, and the
contents do not change the cost), so neither builds; ``--max-flavors`` caps every mode's
flavor count (the chain steps) on both sides alike.
"""

from __future__ import annotations

import base64
import statistics
import time
from pathlib import Path

import httpx
from harness import Scenario, embedding_dim, seed_label_cache, table

from clip_service.testing.images import image_bytes, make_image
from clip_service.testing.library_cache import write_library_cache
from clip_service.testing.tiny_models import make_all
from clip_service.testing.upstream import LIBRARY_MODEL_NAME, MODES, library_interrogator


def timed(call, repeat: int) -> tuple[float, object]:
    """The median seconds of ``repeat`` calls, and the last call's result."""
    runs = [(time.perf_counter(), call(), time.perf_counter()) for _ in range(repeat)]
    return statistics.median(end - start for start, _, end in runs), runs[-1][1]


def main() -> None:
    scenario = Scenario("interrogation_modes", __doc__, models=None)
    scenario.arg("--repeat", type=int, default=3)
    scenario.arg(
        "--label-tables",
        choices=("build", "seeded"),
        default="build",
        help="build: each side builds its own (timed in 'start'); seeded: both load the "
        "same precomputed embeddings",
    )
    scenario.arg("--max-flavors", type=int, help="on both sides (default: 0.6.0's)")
    scenario.parser.set_defaults(start_timeout=7200)
    args, work = scenario.parse(), scenario.work
    if args.models:
        models = {name: scenario.model_dir(name) for name in ("open-clip", "blip")}
    else:
        models = make_all(work / "models")
    image = make_image(7, (640, 480))
    blob = base64.b64encode(image_bytes(image)).decode()
    clip_spec = f"local-dir:{models['open-clip']}"
    settings = {
        "CLIP_MODEL": clip_spec,
        "CAPTION_MODEL": str(models["blip"]),
        "LABEL_CACHE_DIR": str(work / "served-cache"),
        "REQUEST_TIMEOUT_S": str(args.start_timeout),  # the first answer waits for the tables
        **scenario.server_env(),
    }
    if args.label_tables == "seeded":
        dim = embedding_dim(models["open-clip"])
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
    rows, failures = [], {}
    start = time.perf_counter()  # the server loads or builds its tables from start-up
    with (
        scenario.serve("ours", settings) as server,
        httpx.Client(timeout=args.start_timeout) as client,
    ):

        def serve(mode: str) -> str | None:
            """The served prompt; None if the server failed (recorded in ``failures``)."""
            body = {"image": {"img_blob": blob}, "mode": mode, **flavors}
            response = client.post(f"{server.url}/interrogate", json=body)
            if response.status_code != 200:
                failures[mode] = f"HTTP {response.status_code}: {response.text[:160]}"
                return None
            return response.json()["prompt"]

        server.wait_for_tables(args.start_timeout)  # loaded, or built in the background
        if serve("fast") is None:
            raise RuntimeError(f"the first interrogation failed: {failures['fast']}")
        served_start = time.perf_counter() - start
        model = server.get("/model").text.strip()
        for mode in MODES:
            call = library_calls[mode]
            library_s, expected = timed(lambda call=call: call(image, **flavors), args.repeat)
            print(f"{mode}: clip-interrogator {library_s:.2f} s", flush=True)
            served_s, prompt = timed(lambda m=mode: serve(m), args.repeat)
            print(f"{mode}: served {served_s:.2f} s", flush=True)
            same = (
                f"failed ({failures[mode]})"
                if prompt is None
                else "yes"
                if prompt == expected
                else "NO"
            )
            rows.append((mode, library_s, served_s, same))

    seeded = args.label_tables == "seeded"
    lines = {
        "models": f"{models['open-clip']} (open_clip), {models['blip']} (BLIP), the same "
        "directories on both sides; one 640x480 noise image (PNG)",
        "label tables": "the same precomputed embeddings on both sides (seeded random unit "
        "vectors, float16), loaded from each side's cache"
        + ("; WARNING: the server built tables anyway" if server.built_tables() else "")
        if seeded
        else "each side builds its own (111,908 texts) during 'start'",
        "flavors": f"max_flavors={args.max_flavors} on both sides"
        if args.max_flavors is not None
        else "0.6.0's defaults (max_flavors 32 best/fast/negative, 3 classic)",
        "repeats": f"median of {args.repeat} per mode and side, after start-up",
        "our settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
        "ours GET /model": f"`{model}`",
    }
    start_label = (
        "start: models, label tables from cache"
        if seeded
        else ("start: models + label tables (111,908 texts)")
    )
    speed_up = f"{library_start / served_start:.2f}x"
    table_rows = [(start_label, f"{library_start:.1f}", f"{served_start:.1f}", speed_up, "")]
    for mode, library_s, served_s, same in rows:
        speed_up = "n/a" if same.startswith("failed") else f"{library_s / served_s:.2f}x"
        table_rows.append((mode, f"{library_s:.2f}", f"{served_s:.2f}", speed_up, same))
    _, library_best, served_best, best_same = next(r for r in rows if r[0] == "best")
    goal = (
        f"best mode: served request {best_same} (goal >= 10x faster)\n"
        if best_same.startswith("failed")
        else f"best mode: {library_best / served_best:.2f}x faster served (goal >= 10x)\n"
    )
    head = ["step", "clip-interrogator 0.6.0 (s)", "served (s)", "speed-up", "same prompt"]
    title = "Interrogation per mode: served vs. clip-interrogator 0.6.0 in process"
    scenario.write(title, lines, table(head, table_rows), goal)


if __name__ == "__main__":
    main()
