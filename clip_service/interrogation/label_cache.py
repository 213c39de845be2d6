"""Label-table text embeddings: loaded from disk, fetched from the Hub, or built once.

Encoding the ~112k labels takes minutes to hours on a CPU, so the result is stored as one
safetensors file per table and reused across restarts. What is stored is what
clip-interrogator 0.6.0 ranks with: L2-normalised text features rounded to float16 (it does
``.half()`` and, on CPU, converts back to float32). A table missing from disk is first asked
of ``fetch`` (the library's published tables, :mod:`.hub_tables`), then built.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

from clip_service import metrics
from clip_service.interrogation.labels import LabelTable

__all__ = ["EncodeTexts", "FetchTable", "LabelCache", "LabelTables", "Origin", "TableEmbeddings"]

logger = logging.getLogger(__name__)

EncodeTexts = Callable[[Sequence[str]], Awaitable[np.ndarray]]
"""Raw (un-normalised) float32 text features, one row per text."""
FetchTable = Callable[[LabelTable, int | None], Awaitable[np.ndarray | None]]
"""Published float16 (n, d) embeddings of a table (of width d, if given), or None."""
Origin = Literal["hub", "built"]
"""Where a table's embeddings were made: published by the library's author, or encoded here."""

_FORMAT = "clip-service-label-cache/1"


@dataclass(frozen=True, eq=False)
class TableEmbeddings:
    """A label table with its unit-norm, float16-rounded embeddings held as float32 (n, d)."""

    table: LabelTable
    embeds: np.ndarray
    origin: Origin
    cached: bool  # loaded from this machine's cache rather than made just now


@dataclass(frozen=True, eq=False)
class LabelTables:
    """The embedded tables by name, as the interrogator consumes them."""

    by_name: Mapping[str, TableEmbeddings]

    def __getitem__(self, name: str) -> TableEmbeddings:
        return self.by_name[name]

    @property
    def origins(self) -> dict[str, Origin]:
        return {name: t.origin for name, t in self.by_name.items()}

    @property
    def made_now(self) -> tuple[str, ...]:
        """Names of the tables not loaded from the cache (fetched or encoded just now)."""
        return tuple(name for name, t in self.by_name.items() if not t.cached)


class LabelCache:
    """Loads or builds table embeddings in ``directory`` for one text encoder (``model_key``).

    Files are named by model key, table name and label hash; the full key and hash are also
    stored inside and checked on load with the shape, dtype and finiteness, so a stale,
    truncated or foreign file is rebuilt (with a warning) instead of trusted.
    """

    def __init__(
        self,
        directory: str | Path,
        model_key: str,
        encode: EncodeTexts,
        *,
        fetch: FetchTable | None = None,
        chunk_size: int = 2048,
        progress: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.model_key = model_key
        self.encode, self.fetch = encode, fetch
        self.chunk_size = chunk_size
        self.progress = progress
        self.loaded = 0  # tables taken from disk, for metrics and tests
        self.fetched = 0  # tables taken from the Hub
        self.built = 0  # tables encoded

    def path(self, table: LabelTable) -> Path:
        safe_key = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model_key)
        return self.directory / f"{safe_key}_{table.name}_{table.hash[:16]}.safetensors"

    async def embed_all(
        self,
        tables: Mapping[str, LabelTable],
        on_table: Callable[[TableEmbeddings], None] | None = None,
    ) -> LabelTables:
        """Every table, checking that all share the first one's embedding width;
        ``on_table`` sees each as soon as it is ready."""
        out: dict[str, TableEmbeddings] = {}
        dim = None
        for name, table in tables.items():
            out[name] = await self.embed(table, dim)
            dim = out[name].embeds.shape[1]
            if on_table is not None:
                on_table(out[name])
        return LabelTables(out)

    async def embed(self, table: LabelTable, dim: int | None = None) -> TableEmbeddings:
        """One table from the cache if its file is valid, else fetched or encoded, and written."""
        if not table.labels:
            raise ValueError(f"label table {table.name!r} is empty")
        path = self.path(table)
        embeds, origin, problem = await asyncio.to_thread(self._read, path, table, dim)
        if embeds is not None:
            self.loaded += 1
            metrics.label_cache_lookup(table.name, "hit")
            logger.info("label table %s: loaded %s (%s)", table.name, path, origin)
            return TableEmbeddings(table, embeds.astype(np.float32), origin, cached=True)
        if problem:
            logger.warning("label cache %s is unusable (%s); rebuilding it", path, problem)
        half = await self.fetch(table, dim) if self.fetch is not None else None
        origin = "hub" if half is not None else "built"
        if half is None:
            half = await self._build(table)
        try:
            await asyncio.to_thread(self._write, path, table, half, origin)
        except OSError as e:  # a read-only or full disk costs a rebuild next time, not service
            logger.warning("could not write label cache %s: %s", path, e)
        if origin == "hub":
            self.fetched += 1
        else:
            self.built += 1
        metrics.label_cache_lookup(table.name, "rebuild" if problem else "miss")
        logger.info("label table %s: %s %d embeddings into %s", table.name, origin, len(half), path)
        return TableEmbeddings(table, half.astype(np.float32), origin, cached=False)

    async def _build(self, table: LabelTable) -> np.ndarray:
        """Encode chunk by chunk, normalise and round to float16 with torch as 0.6.0 does."""
        parts = []
        starts = range(0, len(table.labels), self.chunk_size)
        bar = tqdm(starts, desc=f"Preprocessing {table.name}", disable=not self.progress)
        for start in bar:
            chunk = table.labels[start : start + self.chunk_size]
            raw = np.asarray(await self.encode(chunk), dtype=np.float32)
            if raw.ndim != 2 or raw.shape[0] != len(chunk):
                raise ValueError(f"encoder returned shape {raw.shape} for {len(chunk)} texts")
            features = torch.from_numpy(raw)
            parts.append((features / features.norm(dim=-1, keepdim=True)).half().numpy())
        return np.concatenate(parts)

    def _read(
        self, path: Path, table: LabelTable, dim: int | None
    ) -> tuple[np.ndarray | None, Origin, str | None]:
        """(float16 embeddings, origin, None) if ``path`` is valid, else (None, _, why; None
        if absent)."""
        if not path.is_file():
            return None, "built", None
        try:
            with safe_open(path, framework="np") as f:
                meta = f.metadata() or {}
                embeds = f.get_tensor("embeds")
        except Exception as e:  # any unreadable file is rebuilt, whatever the library raises
            return None, "built", f"unreadable: {e}"
        origin: Origin = "hub" if meta.get("origin") == "hub" else "built"
        expected = {"format": _FORMAT, "model_key": self.model_key, "hash": table.hash}
        for key, value in expected.items():
            if meta.get(key) != value:
                return None, origin, f"{key} is {meta.get(key)!r}, expected {value!r}"
        if embeds.dtype != np.float16 or embeds.ndim != 2:
            return None, origin, f"embeds are {embeds.dtype} with shape {embeds.shape}"
        if embeds.shape[0] != len(table.labels) or (dim is not None and embeds.shape[1] != dim):
            return None, origin, f"embeds have shape {embeds.shape} for {len(table.labels)} labels"
        if not np.isfinite(embeds).all():
            return None, origin, "embeds hold non-finite values"
        return embeds, origin, None

    def _write(self, path: Path, table: LabelTable, embeds: np.ndarray, origin: Origin) -> None:
        """Write via a temporary file and rename, so readers never see a partial file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own: writers in other containers sharing the folder may have this pid.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        meta = {"format": _FORMAT, "model_key": self.model_key, "hash": table.hash}
        save_file({"embeds": embeds}, tmp, metadata={**meta, "table": table.name, "origin": origin})
        os.replace(tmp, path)
