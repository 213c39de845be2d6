"""Label-table text embeddings: computed once through the CLIP text encoder, cached on disk.

Encoding the ~112k labels takes minutes on a CPU, so the result is stored as one safetensors
file per table and reused across restarts. What is stored is what clip-interrogator 0.6.0
ranks with: L2-normalised text features rounded to float16 (it does ``.half()`` and, on CPU,
converts back to float32), so rankings match the library's bit for bit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

from clip_service import metrics
from clip_service.interrogation.labels import LabelTable

__all__ = ["EncodeTexts", "LabelCache", "LabelTables", "TableEmbeddings"]

logger = logging.getLogger(__name__)

EncodeTexts = Callable[[Sequence[str]], Awaitable[np.ndarray]]
"""Raw (un-normalised) float32 text features, one row per text."""

_FORMAT = "clip-service-label-cache/1"


@dataclass(frozen=True, eq=False)
class TableEmbeddings:
    """A label table with its unit-norm, float16-rounded embeddings held as float32 (n, d)."""

    table: LabelTable
    embeds: np.ndarray
    built: bool  # computed now rather than loaded from the cache


@dataclass(frozen=True, eq=False)
class LabelTables:
    """The embedded tables by name, as the interrogator consumes them."""

    by_name: Mapping[str, TableEmbeddings]

    def __getitem__(self, name: str) -> TableEmbeddings:
        return self.by_name[name]

    @property
    def built(self) -> tuple[str, ...]:
        """Names of the tables that had to be encoded (empty when all came from the cache)."""
        return tuple(name for name, t in self.by_name.items() if t.built)


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
        chunk_size: int = 2048,
        progress: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.model_key = model_key
        self.encode = encode
        self.chunk_size = chunk_size
        self.progress = progress
        self.loaded = 0  # tables taken from disk, for metrics and tests
        self.built = 0  # tables encoded

    def path(self, table: LabelTable) -> Path:
        safe_key = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model_key)
        return self.directory / f"{safe_key}_{table.name}_{table.hash[:16]}.safetensors"

    async def embed_all(self, tables: Mapping[str, LabelTable]) -> LabelTables:
        """Every table, checking that all share the first one's embedding width."""
        out: dict[str, TableEmbeddings] = {}
        dim = None
        for name, table in tables.items():
            out[name] = await self.embed(table, dim)
            dim = out[name].embeds.shape[1]
        return LabelTables(out)

    async def embed(self, table: LabelTable, dim: int | None = None) -> TableEmbeddings:
        """One table from the cache if its file is valid, else encoded and written."""
        if not table.labels:
            raise ValueError(f"label table {table.name!r} is empty")
        path = self.path(table)
        embeds, problem = await asyncio.to_thread(self._read, path, table, dim)
        if embeds is not None:
            self.loaded += 1
            metrics.label_cache_lookup(table.name, "hit")
            logger.info("label table %s: loaded %s", table.name, path)
            return TableEmbeddings(table, embeds.astype(np.float32), built=False)
        if problem:
            logger.warning("label cache %s is unusable (%s); rebuilding it", path, problem)
        half = await self._build(table)
        try:
            await asyncio.to_thread(self._write, path, table, half)
        except OSError as e:  # a read-only or full disk costs a rebuild next time, not service
            logger.warning("could not write label cache %s: %s", path, e)
        self.built += 1
        metrics.label_cache_lookup(table.name, "rebuild" if problem else "miss")
        logger.info("label table %s: built %d embeddings into %s", table.name, len(half), path)
        return TableEmbeddings(table, half.astype(np.float32), built=True)

    async def _build(self, table: LabelTable) -> np.ndarray:
        """Encode in 0.6.0's chunks, normalise and round to float16 with torch as it does."""
        parts = []
        chunks = list(_array_split_bounds(len(table.labels), self.chunk_size))
        bar = tqdm(chunks, desc=f"Preprocessing {table.name}", disable=not self.progress)
        for start, stop in bar:
            raw = np.asarray(await self.encode(table.labels[start:stop]), dtype=np.float32)
            if raw.ndim != 2 or raw.shape[0] != stop - start:
                raise ValueError(f"encoder returned shape {raw.shape} for {stop - start} texts")
            features = torch.from_numpy(raw)
            parts.append((features / features.norm(dim=-1, keepdim=True)).half().numpy())
        return np.concatenate(parts)

    def _read(
        self, path: Path, table: LabelTable, dim: int | None
    ) -> tuple[np.ndarray | None, str | None]:
        """(float16 embeddings, None) if ``path`` is valid, else (None, why; None if absent)."""
        if not path.is_file():
            return None, None
        try:
            with safe_open(path, framework="np") as f:
                meta = f.metadata() or {}
                embeds = f.get_tensor("embeds")
        except Exception as e:  # any unreadable file is rebuilt, whatever the library raises
            return None, f"unreadable: {e}"
        expected = {"format": _FORMAT, "model_key": self.model_key, "hash": table.hash}
        for key, value in expected.items():
            if meta.get(key) != value:
                return None, f"{key} is {meta.get(key)!r}, expected {value!r}"
        if embeds.dtype != np.float16 or embeds.ndim != 2:
            return None, f"embeds are {embeds.dtype} with shape {embeds.shape}"
        if embeds.shape[0] != len(table.labels) or (dim is not None and embeds.shape[1] != dim):
            return None, f"embeds have shape {embeds.shape} for {len(table.labels)} labels"
        if not np.isfinite(embeds).all():
            return None, "embeds hold non-finite values"
        return embeds, None

    def _write(self, path: Path, table: LabelTable, embeds: np.ndarray) -> None:
        """Write via a temporary file and rename, so readers never see a partial file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        meta = {"format": _FORMAT, "model_key": self.model_key, "hash": table.hash}
        save_file({"embeds": embeds}, tmp, metadata={**meta, "table": table.name})
        os.replace(tmp, path)


def _array_split_bounds(n: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """The chunks of 0.6.0's ``np.array_split(labels, max(1, n / chunk_size))``.

    That is floor(n / chunk_size) near-equal sections (so up to ~2x chunk_size each), the
    first ``n % sections`` one longer. Matching them keeps encoder batches identical to the
    library's, in case the encoder's numerics depend on batch size.
    """
    sections = max(1, n // chunk_size)
    each, extra = divmod(n, sections)
    start = 0
    for i in range(sections):
        stop = start + each + (1 if i < extra else 0)
        yield start, stop
        start = stop
