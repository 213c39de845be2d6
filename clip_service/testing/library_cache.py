"""clip-interrogator 0.6.0's label-table cache format, written from given embeddings, so a
library run loads the same tables the service has instead of encoding its own."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def write_library_cache(
    directory: Path, model_name: str, tables: Iterable[tuple[str, str, np.ndarray]]
) -> Path:
    """(table, label hash, float16 embeds) written where and as clip-interrogator 0.6.0
    caches its own tables (the hash as int8 character codes), so a library run on
    ``model_name`` loads these instead of encoding: parity tests give both sides one set."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = model_name.replace("/", "_").replace("@", "_")
    for table, label_hash, embeds in tables:
        codes = np.array([ord(c) for c in label_hash], dtype=np.int8)
        tensors = {"embeds": embeds.astype(np.float16), "hash": codes}
        save_file(tensors, directory / f"{prefix}_{table}.safetensors")
    return directory
