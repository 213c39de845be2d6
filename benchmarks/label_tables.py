"""Label-table build time: ours vs. clip-interrogator 0.6.0's ``LabelTable``, same model.

clip-interrogator needs about an hour for all 111,908 label texts with ViT-B-32 on 2 CPU
cores, so both sides embed the same fixed subset: the first N flavors (default 4,096, two
0.6.0 chunks of 2,048). Ours runs the production build code (``LabelCache``) over

* in-process: the model object ``bentoml serve`` builds (``ClipEncoder`` with the server's
  settings, see ``--server-env``), and
* served (unless ``--no-served``): a running ``bentoml serve``'s ``POST /encode``, one
  request per chunk, so the entry service and the batched encoder are on the path.

``--full`` also times the server building every table from an empty cache (start to the
first ``/analyze`` answer, which waits for the tables).

    python benchmarks/label_tables.py [--models /work/bench-models] [--subset 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import open_clip
from clip_interrogator import Config
from clip_interrogator.clip_interrogator import LabelTable as LibraryLabelTable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (
    bentoml_command,
    bentoml_env,
    header,
    markdown_table,
    model_answer,
    parse_env,
    production_encoder,
    seed_label_cache,
    server_process,
    versions,
    write_results,
)
from clip_service.interrogation import LabelCache, read_label_tables
from clip_service.interrogation.labels import LabelTable
from tests.conftest import b64, free_port, image_bytes, make_image


def library_build(model_dir: Path, labels: list[str], cache: Path) -> tuple[float, np.ndarray]:
    """0.6.0's ``LabelTable(labels, "flavors", ci)`` on the open_clip directory's model."""
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    config = Config(
        clip_model_name="ViT-B-32/bench",  # the tokenizer 0.6.0 picks: the model's own
        cache_path=str(cache),
        download_cache=False,
        device="cpu",
        quiet=True,
    )
    ci = SimpleNamespace(
        clip_model=model.eval(), config=config, tokenize=open_clip.get_tokenizer("ViT-B-32")
    )
    start = time.perf_counter()
    table = LibraryLabelTable(labels, "flavors", ci)
    seconds = time.perf_counter() - start
    return seconds, np.stack(table.embeds)


async def our_build(
    table: LabelTable, cache_dir: Path, key: str, encode
) -> tuple[float, np.ndarray]:
    cache = LabelCache(cache_dir, key, encode, progress=False)
    start = time.perf_counter()
    built = await cache.embed(table)
    return time.perf_counter() - start, built.embeds


def served_encoder(client: httpx.AsyncClient, url: str):
    async def encode(texts: Sequence[str]) -> np.ndarray:
        response = await client.post(f"{url}/encode", json=[{"text": t} for t in texts])
        response.raise_for_status()
        return np.asarray(response.json(), dtype=np.float32)

    return encode


async def served_build(url: str, table: LabelTable, cache_dir: Path, key: str):
    async with httpx.AsyncClient(timeout=3600) as client:
        return await our_build(table, cache_dir, key, served_encoder(client, url))


def full_build(settings: dict[str, str], work: Path, timeout_s: float) -> tuple[float, float]:
    """(seconds to ready, seconds from start to the first /analyze answer), empty cache."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = bentoml_env(work / "bentoml-full", {**settings, "LABEL_CACHE_DIR": str(work / "full")})
    body = {"image": {"img_blob": b64(image_bytes(make_image(7)))}, "top_k": 1}
    start = time.perf_counter()
    with server_process(
        "full", bentoml_command(port), f"{url}/readyz", work, env=env, timeout_s=timeout_s
    ):
        ready = time.perf_counter() - start
        httpx.post(f"{url}/analyze", json=body, timeout=timeout_s).raise_for_status()
        return ready, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("/work/bench-models"))
    parser.add_argument("--subset", type=int, default=4096, help="first N flavors")
    parser.add_argument("--no-served", action="store_true", help="skip the served build")
    parser.add_argument("--full", action="store_true", help="also ours on all 111,908 texts")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VAL")
    parser.add_argument("--start-timeout", type=float, default=900)
    parser.add_argument("--full-timeout", type=float, default=5400)
    parser.add_argument("--out", type=Path, help="default benchmarks/results/label_tables.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-labels-"))
    model_dir = (args.models / "open-clip").resolve()
    key = f"local-dir:{model_dir}"
    settings = {
        "CLIP_MODEL": key,
        "CAPTION_MODEL": str((args.models / "blip").resolve()),
        "MAX_ITEMS": "4096",  # one /encode request per 0.6.0 chunk (up to 4,095 texts)
        **parse_env(args.server_env),
    }
    flavors = list(read_label_tables()["flavors"].labels[: args.subset])
    table = LabelTable.of("flavors", flavors)
    n = len(flavors)
    rows, notes, timings = [], {}, {}

    start = time.perf_counter()
    library_s, library_embeds = library_build(model_dir, flavors, work / "library-cache")
    timings["library"] = time.perf_counter() - start
    print(f"clip-interrogator: {n / library_s:.1f} texts/s", flush=True)
    rows.append(
        (
            "clip-interrogator 0.6.0 `LabelTable`",
            n,
            f"{library_s:.1f}",
            f"{n / library_s:.1f}",
            "1.00x",
            "",
        )
    )

    def add(name: str, seconds: float, embeds: np.ndarray) -> None:
        diff = float(np.abs(embeds - library_embeds).max())
        rows.append(
            (
                name,
                n,
                f"{seconds:.1f}",
                f"{n / seconds:.1f}",
                f"{library_s / seconds:.2f}x",
                f"{diff:.1e}",
            )
        )
        print(f"{name}: {n / seconds:.1f} texts/s", flush=True)

    start = time.perf_counter()
    encoder = production_encoder(settings)

    async def exact(texts: Sequence[str]) -> np.ndarray:
        return encoder.encode_texts_full_context(list(texts))

    async def trimmed(texts: Sequence[str]) -> np.ndarray:
        return encoder.encode_texts(list(texts))

    add(
        "ours in-process, `EXACT_LABEL_TABLES=true` (default: the library's float16 values)",
        *asyncio.run(our_build(table, work / "ours-exact", key, exact)),
    )
    add(
        "ours in-process, `EXACT_LABEL_TABLES=false` (trimmed text tower)",
        *asyncio.run(our_build(table, work / "ours", key, trimmed)),
    )
    timings["ours in-process"] = time.perf_counter() - start

    if not args.no_served:
        start = time.perf_counter()
        served_settings = {**settings, "LABEL_CACHE_DIR": str(work / "served-tables")}
        dim = library_embeds.shape[1]
        seed_label_cache(Path(served_settings["LABEL_CACHE_DIR"]), key, dim)  # no build at start
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = bentoml_env(work / "bentoml", served_settings)
        with server_process(
            "ours",
            bentoml_command(port),
            f"{url}/readyz",
            work,
            env=env,
            timeout_s=args.start_timeout,
        ):
            notes["ours GET /model"] = f"`{model_answer(url)}`"
            add(
                "ours served, trimmed (`LabelCache` over `POST /encode`)",
                *asyncio.run(served_build(url, table, work / "served", key)),
            )
        timings["ours served"] = time.perf_counter() - start

    if args.full:
        start = time.perf_counter()
        ready_s, done_s = full_build(settings, work, args.full_timeout)
        total = sum(len(t.labels) for t in read_label_tables().values())
        build_s = done_s - ready_s
        notes["ours, all tables served"] = (
            f"{total} texts: ready after {ready_s:.0f} s, tables built {build_s:.0f} s later "
            f"({total / build_s:.1f} texts/s; clip-interrogator at its subset rate would take "
            f"{total / (n / library_s) / 60:.0f} min)"
        )
        timings["ours full"] = time.perf_counter() - start

    lines = {
        "versions": versions(),
        "model": f"{key}, loaded by open_clip on both sides",
        "texts": f"the first {n} of clip-interrogator 0.6.0's flavors.txt; 0.6.0's chunking "
        "(np.array_split by 2048) on both sides; embeddings normalised and rounded to float16",
        "our settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
        "step durations": ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
        **notes,
    }
    table_md = markdown_table(
        [
            "build",
            "texts",
            "seconds",
            "texts/s",
            "speed-up vs 0.6.0 (goal >= 5x)",
            "max abs diff vs 0.6.0",
        ],
        rows,
    )
    write_results(
        "label_tables", header("Label-table build time", lines) + "\n" + table_md, args.out
    )


if __name__ == "__main__":
    main()
