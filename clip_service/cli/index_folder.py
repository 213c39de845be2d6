"""`encode-dir --layout clip-retrieval`: embeddings in the folder layout that
clip-retrieval's ``clip inference`` writes and embedding-reader (autofaiss, ``clip index``)
reads, so an index can be built from them.

For ``--out OUT``:

* ``OUT/img_emb/img_emb_000000.npy``, ``..._000001.npy``, ...: float16 ``(n, d)``, each row
  L2-normalised, as ``clip inference`` writes them (inner product = cosine similarity);
* ``OUT/metadata/metadata_000000.jsonl``, ...: line ``i`` of part ``k`` is
  ``{"image_path": ...}`` for row ``i`` of ``img_emb_k`` (the path relative to the
  folder). clip-retrieval writes these as Parquet; that needs pyarrow, which this project
  does not install, so they are JSON Lines (docs/dataset.md converts them);
* ``OUT/embeddings.json``: the model, so a resumed run cannot mix models.

Rows are kept in memory until a part has ``rows_per_file`` of them (or the run ends or is
interrupted), then written: its metadata, then its vectors, each to a temporary name and
renamed, so a reader never sees a partial part and every ``.npy`` has its metadata. A part
never holds zero rows (embedding-reader skips empty ``.npy`` files, which would misalign
the metadata). A re-run drops a metadata part that has no vectors (killed between the two
renames) and encodes only what no part holds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clip_service.cli.bulk_encode import BulkEncodeError

DTYPE = np.float16  # clip inference's: half the size, and ample for nearest neighbours


class IndexFolder:
    """An :class:`~clip_service.cli.bulk_encode.EmbeddingStore` in clip-retrieval's layout."""

    def __init__(self, out: Path, model: str, rows_per_file: int = 10_000) -> None:
        self.vectors, self.metadata = out / "img_emb", out / "metadata"
        self.rows_per_file = rows_per_file
        meta = out / "embeddings.json"
        if meta.exists() and json.loads(meta.read_text())["model"] != model:
            previous = json.loads(meta.read_text())["model"]
            raise BulkEncodeError(
                f"{out} holds embeddings of {previous!r}, not {model!r}: "
                "use the same model or another --out"
            )
        self.vectors.mkdir(parents=True, exist_ok=True)
        self.metadata.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"model": model, "normalized": True, "dtype": "float16"}))
        self.done, self.parts = self._repair()
        self.names: list[str] = []
        self.rows: list[np.ndarray] = []

    def _repair(self) -> tuple[list[str], int]:
        """The names in complete parts, and how many parts there are."""
        done: list[str] = []
        parts = 0
        for listing in sorted(self.metadata.glob("metadata_*.jsonl")):
            part = listing.name.removeprefix("metadata_").removesuffix(".jsonl")
            vectors = self.vectors / f"img_emb_{part}.npy"
            if not vectors.exists():  # killed between the two renames
                listing.unlink()
                continue
            lines = listing.read_text("utf-8").splitlines()
            names = [json.loads(line)["image_path"] for line in lines]
            if len(np.load(vectors, mmap_mode="r")) != len(names):
                raise BulkEncodeError(f"{vectors}: its rows and {listing.name} disagree")
            done += names
            parts = max(parts, int(part) + 1)
        return done, parts

    def append(self, names: Sequence[str], vectors: np.ndarray) -> None:
        if not names:
            return
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        self.names += names
        self.rows.append(unit.astype(DTYPE))
        if len(self.names) >= self.rows_per_file:
            self._write()

    def _write(self) -> None:
        if not self.names:
            return
        part = f"{self.parts:06d}"
        listing = self.metadata / f"metadata_{part}.jsonl"
        records = [json.dumps({"image_path": n}, ensure_ascii=False) + "\n" for n in self.names]
        _replace(listing, "".join(records).encode("utf-8"))
        vectors = self.vectors / f"img_emb_{part}.npy"
        tmp = vectors.with_name(vectors.name + ".tmp")  # not *.npy: readers glob for those
        with tmp.open("wb") as f:
            np.save(f, np.concatenate(self.rows))
        os.replace(tmp, vectors)
        self.parts += 1
        self.names, self.rows = [], []

    def close(self) -> None:
        """Writes the rows not written yet (also when the run was interrupted)."""
        self._write()


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
