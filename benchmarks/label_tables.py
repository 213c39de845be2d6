"""Label-table build time: ours vs. clip-interrogator 0.6.0's ``LabelTable``, same model.

clip-interrogator needs about an hour for all 111,908 label texts with ViT-B-32 on 2 CPU
cores, so the in-process rows embed the same fixed subset: the first N flavors (default
4,096, two 0.6.0 chunks of 2,048), with ``LabelCache`` (the production build code) over

* the model alone: the model object ``bentoml serve`` builds (``production_encoder`` with
  the server's settings, see ``--server-env``), one call per 2,048-text chunk;
* the served build's path: the same model behind ``ClipEngine``'s scheduler at background
  priority, as the ``ClipEncoder`` worker builds its tables from start-up: each chunk runs
  in slices of ~``BULK_SLICE_MS`` of model time, so interactive requests wait at most one.

Served (unless ``--no-served``): a fresh ``bentoml serve`` (empty label cache) builds its
tables in the background from start-up; its rate is read off ``GET /model`` progress over
its first N labels (the artists table, which it builds first: other texts than the subset,
of similar length). ``--full`` waits for all 111,908 texts.

    python benchmarks/label_tables.py [--models /work/bench-models] [--subset 4096] [--full]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
from clip_interrogator import Config
from clip_interrogator.clip_interrogator import LabelTable as LibraryLabelTable
from harness import Scenario, production_encoder, table

from clip_service.engines.clip_engine import ClipEngine, EngineLimits
from clip_service.interrogation.label_cache import EncodeTexts, LabelCache
from clip_service.interrogation.labels import LabelTable, read_label_tables
from clip_service.scheduling import Priority
from clip_service.settings import get_settings


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
    table: LabelTable, cache_dir: Path, key: str, encode: EncodeTexts
) -> tuple[float, np.ndarray]:
    cache = LabelCache(cache_dir, key, encode, progress=False)
    start = time.perf_counter()
    built = await cache.embed(table)
    return time.perf_counter() - start, built.embeds


async def sliced_build(
    engine: ClipEngine, table: LabelTable, cache_dir: Path, key: str
) -> tuple[float, np.ndarray]:
    """``our_build`` through the engine's scheduler at background priority (the worker's)."""

    async def encode(texts: Sequence[str]) -> np.ndarray:
        return await engine.encode_texts(texts, Priority.BACKGROUND)

    try:
        return await our_build(table, cache_dir, key, encode)
    finally:
        await engine.scheduler.close()


def served_build(
    scenario: Scenario, settings: dict[str, str], subset: int, full: bool, timeout_s: float
) -> dict[str, float | str]:
    """A fresh server's background build, read off ``GET /model``: seconds to ready, rate
    over its first ``subset`` labels after the first progress, and (``full``) to the end."""
    start = time.perf_counter()
    with scenario.serve(
        "served", {**settings, "LABEL_CACHE_DIR": str(scenario.work / "served")}
    ) as server:
        out: dict[str, float | str] = {"ready_s": time.perf_counter() - start}
        out["model"] = server.get("/model").text.strip()
        first: tuple[float, int] | None = None
        while time.perf_counter() - start < timeout_s:
            tables = server.model()["interrogation"]["label_tables"]
            now, done = time.perf_counter(), tables["labels_done"]
            if first is None and done:
                first = (now, done)
            if first and "rate" not in out and done - first[1] >= subset:
                out["labels"] = done - first[1]
                out["rate"] = (done - first[1]) / (now - first[0])
                if not full:
                    return out
            if tables["state"] == "ready":
                out["full_s"], out["total"] = now - start, tables["labels_total"]
                if "rate" not in out:  # done before a rate could be read: the whole build's
                    out["labels"] = tables["labels_total"]
                    out["rate"] = tables["labels_total"] / (now - start)
                return out
            time.sleep(0.2)
    raise RuntimeError(f"the served build did not finish within {timeout_s:.0f} s")


def main() -> None:
    scenario = Scenario("label_tables", __doc__)
    scenario.arg("--subset", type=int, default=4096, help="first N flavors")
    scenario.arg("--no-served", action="store_true", help="skip the served build")
    scenario.arg("--full", action="store_true", help="also ours on all 111,908 texts")
    scenario.arg("--full-timeout", type=float, default=5400)
    args, work = scenario.parse(), scenario.work
    model_dir = scenario.model_dir("open-clip")
    key = f"local-dir:{model_dir}"
    settings = {
        "CLIP_MODEL": key,
        "CAPTION_MODEL": str(scenario.model_dir("blip")),
        **scenario.server_env(),
    }
    flavors = list(read_label_tables()["flavors"].labels[: args.subset])
    labels = LabelTable.of("flavors", flavors)
    n = len(flavors)

    with scenario.step("library"):
        library_s, library_embeds = library_build(model_dir, flavors, work / "library-cache")
    print(f"clip-interrogator: {n / library_s:.1f} texts/s", flush=True)
    rows = [
        (
            "clip-interrogator 0.6.0 `LabelTable`",
            n,
            f"{library_s:.1f}",
            f"{n / library_s:.1f}",
            "1.00x",
            "",
        )
    ]

    def add(name: str, seconds: float, embeds: np.ndarray) -> None:
        diff = float(np.abs(embeds - library_embeds).max())
        speed_up = f"{library_s / seconds:.2f}x"
        rows.append((name, n, f"{seconds:.1f}", f"{n / seconds:.1f}", speed_up, f"{diff:.1e}"))
        print(f"{name}: {n / seconds:.1f} texts/s", flush=True)

    with scenario.step("ours in-process"):
        model = production_encoder(settings)
        model.encode_texts(flavors[:64])  # warm-up, not timed

        async def unsliced(texts: Sequence[str]) -> np.ndarray:
            return model.encode_texts(list(texts))

        add(
            "ours in-process, the model alone (one call per 2,048-text chunk)",
            *asyncio.run(our_build(labels, work / "ours", key, unsliced)),
        )
        served = get_settings()
        limits = EngineLimits(
            image_max_batch=served.image_max_batch_size,
            text_max_batch=served.text_max_batch_size,
            slice_s=served.bulk_slice_ms / 1000,
            max_wait_s=served.max_latency_ms / 1000,
        )
        add(
            f"ours in-process, the served build's path (scheduler, background priority, "
            f"{served.bulk_slice_ms:g} ms slices)",
            *asyncio.run(sliced_build(ClipEngine(model, limits), labels, work / "sliced", key)),
        )

    if not args.no_served:
        with scenario.step("ours served"):
            timeout = args.full_timeout if args.full else args.start_timeout
            build = served_build(scenario, settings, n, args.full, timeout)
        scenario.notes["ours GET /model"] = f"`{build['model']}`"
        rate, done = float(build["rate"]), int(build["labels"])
        name = "ours served: a fresh server's background build (its first labels: artists)"
        speed_up = f"{rate / (n / library_s):.2f}x (other texts)"
        rows.append((name, done, f"{done / rate:.1f}", f"{rate:.1f}", speed_up, ""))
        if "full_s" in build:
            total, full_s = int(build["total"]), float(build["full_s"])
            scenario.notes["ours, all tables served"] = (
                f"{total} texts: ready after {float(build['ready_s']):.0f} s, all tables "
                f"{full_s:.0f} s after start ({total / full_s:.1f} texts/s overall; "
                "clip-interrogator at its subset rate would take "
                f"{total / (n / library_s) / 60:.0f} min)"
            )

    lines = {
        "model": f"{key}, loaded by open_clip on both sides",
        "texts": f"the first {n} of clip-interrogator 0.6.0's flavors.txt; 0.6.0's chunking "
        "(np.array_split by 2048) on both sides; embeddings normalised and rounded to float16",
        "our settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
    }
    head = [
        "build",
        "texts",
        "seconds",
        "texts/s",
        "speed-up vs 0.6.0 (goal >= 5x)",
        "max abs diff vs 0.6.0",
    ]
    scenario.write("Label-table build time", lines, table(head, rows))


if __name__ == "__main__":
    main()
