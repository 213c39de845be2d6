"""clip-interrogator 0.6.0's label tables, built exactly as its ``load_clip_model`` builds them.

The word lists are read from the installed ``clip_interrogator`` package (never copied into
this repository), so the tables and their hashes always match the pinned library's.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MERGED_TABLES",
    "TABLE_NAMES",
    "LabelTable",
    "label_hash",
    "load_list",
    "package_data_dir",
    "read_label_tables",
]

TABLE_NAMES = ("artists", "flavors", "mediums", "movements", "trendings", "negative")
# The tables `best` and `fast` rank as one, in the order 0.6.0's `_merge_tables` joins them.
MERGED_TABLES = ("artists", "flavors", "mediums", "movements", "trendings")

# Hard-coded in 0.6.0's load_clip_model, not a data file.
_SITES = (
    "Artstation", "behance", "cg society", "cgsociety", "deviantart", "dribble",
    "flickr", "instagram", "pexels", "pinterest", "pixabay", "pixiv", "polycount",
    "reddit", "shutterstock", "tumblr", "unsplash", "zbrush central",
)  # fmt: skip


@dataclass(frozen=True)
class LabelTable:
    """One named list of labels and the hash 0.6.0 keys its embedding cache with."""

    name: str
    labels: tuple[str, ...]
    hash: str

    @classmethod
    def of(cls, name: str, labels: Sequence[str]) -> LabelTable:
        labels = tuple(labels)
        return cls(name, labels, label_hash(labels))


def label_hash(labels: Sequence[str]) -> str:
    """0.6.0's table hash: sha256 of the labels joined by "," (so it is order-sensitive)."""
    return hashlib.sha256(",".join(labels).encode()).hexdigest()


def load_list(path: Path) -> list[str]:
    """0.6.0's ``load_list``: every line stripped, blank lines kept, bad UTF-8 replaced."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f.readlines()]


def package_data_dir() -> Path:
    """The installed clip_interrogator's ``data/`` folder, found without importing the package
    (importing it would pull in transformers and open_clip)."""
    spec = importlib.util.find_spec("clip_interrogator")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("clip_interrogator is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def read_label_tables(data_dir: Path | None = None) -> dict[str, LabelTable]:
    """All six tables, keyed by the names 0.6.0 gives them (and its cache files use)."""
    data = data_dir or package_data_dir()
    raw_artists = load_list(data / "artists.txt")
    artists = [f"by {a}" for a in raw_artists] + [f"inspired by {a}" for a in raw_artists]
    trendings = [
        *_SITES,
        *(f"trending on {site}" for site in _SITES),
        *(f"featured on {site}" for site in _SITES),
        *(f"{site} contest winner" for site in _SITES),
    ]
    labels = {
        "artists": artists,
        "flavors": load_list(data / "flavors.txt"),
        "mediums": load_list(data / "mediums.txt"),
        "movements": load_list(data / "movements.txt"),
        "trendings": trendings,
        "negative": load_list(data / "negative.txt"),
    }
    return {name: LabelTable.of(name, labels[name]) for name in TABLE_NAMES}
