"""`clip-service encode-dir`: a folder of images to one embedding matrix, resumably.

Output, for ``--out vectors.npy``:

* ``vectors.npy``: float32 ``(n, d)``, the raw model outputs (as ``/encode`` returns them,
  not normalised);
* ``vectors.files.txt``: UTF-8, line ``i`` is the path (relative to the folder) of row ``i``;
* ``vectors.json``: ``{"model": ...}``, so a resumed run cannot mix models.

Rows and lines are appended after every batch (the ``.npy`` header is rewritten in place by
``npy-append-array``), so an interrupted run keeps every finished batch and a re-run
encodes only the files not listed yet. Plain numpy files load anywhere
(``np.load(..., mmap_mode="r")``); Parquet would add pyarrow (~100 MB) for no gain here.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np
from npy_append_array.npy_append_array import (
    NpyAppendArray,
    ensure_appendable,
    needs_recovery,
    recover,
)
from PIL import Image
from tqdm import tqdm

from clip_service.errors import InvalidInput
from clip_service.inputs.images import REFUSED_FORMATS, decode_image
from clip_service.models.clip import ClipModel
from clip_service.models.preprocess import build_preprocessor


def _image_suffixes() -> frozenset[str]:
    """File name endings of the formats Pillow opens and the server decodes: not its stubs
    (which identify a file but cannot decode it), MPEG (likewise) or refused formats."""
    Image.init()
    undecodable = {"BUFR", "GRIB", "HDF5", "WMF", "MPEG", *REFUSED_FORMATS}
    return frozenset(
        suffix
        for suffix, kind in Image.registered_extensions().items()
        if kind in Image.OPEN and kind not in undecodable
    )


IMAGE_SUFFIXES = _image_suffixes()


class BulkEncodeError(RuntimeError):
    """A problem that stops the run (reported in one line)."""


@dataclass
class Encoded:
    """One batch's outcome: vectors for ``names`` (in order) and files that failed, why."""

    names: list[str]
    vectors: np.ndarray
    failed: list[tuple[str, str]] = field(default_factory=list)


class Encoder(Protocol):
    model: str

    def encode(self, root: Path, names: Sequence[str]) -> Encoded: ...


class Store(Protocol):
    """Where vectors go (:class:`EmbeddingStore`, or clip-retrieval's layout:
    :class:`~clip_service.cli.index_folder.IndexFolder`): the names it holds, appends."""

    done: list[str]

    def append(self, names: Sequence[str], vectors: np.ndarray) -> None: ...
    def close(self) -> None: ...


def split_files(root: Path) -> tuple[list[str], list[str]]:
    """Image files under ``root`` (recursive, by suffix) and the other files, each as sorted
    POSIX paths relative to ``root``. Hidden files and folders (``.git``, a run's temporary
    files) are neither."""
    images, others = [], []
    for path in root.rglob("*"):
        name = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in name.split("/")) or not path.is_file():
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(name)
    return sorted(images), sorted(others)


def find_images(root: Path) -> list[str]:
    """Image files under ``root`` (recursive, by suffix), as sorted POSIX relative paths."""
    return split_files(root)[0]


class InProcessEncoder:
    """The model in this process, with the server's decoding and preprocessing."""

    def __init__(self, model: ClipModel, max_pixels: int) -> None:
        self.clip, self.max_pixels = model, max_pixels
        self.model = model.spec.raw
        self.preprocess = build_preprocessor(model.preprocess_config)

    def encode(self, root: Path, names: Sequence[str]) -> Encoded:
        pixels, done, failed = [], [], []
        for name in names:
            try:
                image = decode_image((root / name).read_bytes(), name, max_pixels=self.max_pixels)
            except (InvalidInput, OSError) as exc:
                failed.append((name, str(exc)))
                continue
            pixels.append(self.preprocess(image))
            done.append(name)
        if not pixels:
            return Encoded([], np.zeros((0, 0), np.float32), failed)
        return Encoded(done, self.clip.encode_images(np.stack(pixels)), failed)


class ServerEncoder:
    """A running server's ``POST /encode`` with base64 images, one request per batch."""

    def __init__(self, url: str, timeout_s: float = 600, api_key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.model = str(self._call("GET", "/model").json()["spec"])

    def _call(self, method: str, route: str, **kwargs: object) -> httpx.Response:
        try:
            return self.client.request(method, route, **kwargs)
        except httpx.HTTPError as exc:
            raise BulkEncodeError(f"cannot reach {self.client.base_url}: {exc}") from None

    def encode(self, root: Path, names: Sequence[str]) -> Encoded:
        blobs, done, failed = [], [], []
        for name in names:
            try:
                blobs.append(base64.b64encode((root / name).read_bytes()).decode())
                done.append(name)
            except OSError as exc:
                failed.append((name, str(exc)))
        if not blobs:
            return Encoded([], np.zeros((0, 0), np.float32), failed)
        response = self._call("POST", "/encode", json=[{"img_blob": b} for b in blobs])
        if response.status_code in (400, 413) and len(done) > 1:
            # One bad image fails the whole request: find it by sending each alone.
            parts = [self.encode(root, [name]) for name in done]
            vectors = [p.vectors for p in parts if p.names]
            return Encoded(
                [n for p in parts for n in p.names],
                np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32),
                failed + [f for p in parts for f in p.failed],
            )
        if response.status_code in (400, 413):
            return Encoded([], np.zeros((0, 0), np.float32), [(done[0], _error(response))])
        if response.status_code != 200:
            raise BulkEncodeError(f"server answered {response.status_code}: {_error(response)}")
        return Encoded(done, np.asarray(response.json(), dtype=np.float32), failed)


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


class EmbeddingStore:
    """The three output files; opening repairs what an interrupted run left half-written."""

    def __init__(self, out: Path, model: str) -> None:
        if out.suffix != ".npy":
            raise BulkEncodeError(f"{out}: --out must end in .npy")
        self.out = out
        self.files, self.meta = out.with_suffix(".files.txt"), out.with_suffix(".json")
        out.parent.mkdir(parents=True, exist_ok=True)
        if self.meta.exists():
            previous = json.loads(self.meta.read_text())["model"]
            if previous != model:
                raise BulkEncodeError(
                    f"{out} holds embeddings of {previous!r}, not {model!r}: "
                    "use the same model or another --out"
                )
        else:
            self.meta.write_text(json.dumps({"model": model}) + "\n")
        self.done = self._repair()
        self.array = NpyAppendArray(str(out))
        self.listing = self.files.open("a", encoding="utf-8")

    def _repair(self) -> list[str]:
        """The names whose rows are complete; rows or lines past them are dropped."""
        text = self.files.read_text("utf-8") if self.files.exists() else ""
        names = text.split("\n")[:-1]  # a last line without its newline was cut short
        rows = 0
        if self.out.exists():
            if needs_recovery(str(self.out)):
                recover(str(self.out))  # drops a partly written row
            rows = len(np.load(self.out, mmap_mode="r"))
        keep = min(rows, len(names))
        if rows > keep:
            kept = np.array(np.load(self.out, mmap_mode="r")[:keep])
            tmp = self.out.with_suffix(".tmp.npy")
            np.save(tmp, kept)
            os.replace(tmp, self.out)
        if rows:
            ensure_appendable(str(self.out))
        if len(names) != keep or not text.endswith("\n"):
            self.files.write_text("".join(f"{n}\n" for n in names[:keep]), "utf-8")
        return names[:keep]

    def append(self, names: Sequence[str], vectors: np.ndarray) -> None:
        """Rows first, then their names: a crash in between leaves rows that are dropped."""
        if not names:
            return
        self.array.append(np.ascontiguousarray(vectors, dtype=np.float32))
        self.listing.write("".join(f"{n}\n" for n in names))
        self.listing.flush()

    def close(self) -> None:
        self.array.close()
        self.listing.close()


@dataclass
class Summary:
    encoded: int = 0
    already: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def encode_dir(
    root: Path, store: Store, encoder: Encoder, batch_size: int, progress: bool = True
) -> Summary:
    """Encode the images under ``root`` that ``store`` lacks, ``batch_size`` at a time."""
    done = set(store.done)
    names = find_images(root)
    todo = [n for n in names if n not in done]
    pending = [n for n in todo if "\n" not in n and "\r" not in n]
    summary = Summary(already=len(names) - len(todo))
    summary.failed = [(n, "a line break in the name") for n in set(todo) - set(pending)]
    with tqdm(total=len(pending), unit="img", disable=not progress) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            result = encoder.encode(root, batch)
            store.append(result.names, result.vectors)
            summary.encoded += len(result.names)
            summary.failed.extend(result.failed)
            bar.update(len(batch))
    return summary
