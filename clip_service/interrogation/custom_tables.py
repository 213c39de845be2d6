"""Your own label tables: named term lists, embedded once and ranked against images.

clip-interrogator's most requested feature is ranking an image against one's own terms
(its ``LabelTable(terms, name, ci)``). Here a list is a file ``<name>.txt`` in one directory
(one term per line; put there by hand, or uploaded through the API, which writes the file),
embedded as its terms alone, exactly as ``LabelTable`` does, through the model's scheduler
at background priority, and cached by model and list hash like the built-in tables (so an
unchanged list is never embedded twice, and an edited one is embedded again). Every model
worker reads the directory, so an upload reaches all of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel

from clip_service.errors import InvalidInput
from clip_service.interrogation.label_cache import LabelCache, TableEmbeddings
from clip_service.interrogation.labels import LabelTable
from clip_service.models.ranking import rank

if TYPE_CHECKING:
    from clip_service.settings import Settings

logger = logging.getLogger(__name__)

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SUFFIX = ".txt"


@dataclass(frozen=True)
class CustomTableLimits:
    max_tables: int
    max_labels: int
    max_label_chars: int

    @classmethod
    def of(cls, settings: Settings) -> CustomTableLimits:
        """The limits the settings set (``MAX_CUSTOM_TABLES``, ...), as the entry and the
        encoder both check them."""
        return cls(
            settings.max_custom_tables, settings.max_custom_table_labels, settings.max_text_chars
        )


class CustomTableStatus(BaseModel):
    name: str
    labels: int
    state: Literal["building", "ready", "failed"]
    error: str | None = None


class RankedTerm(BaseModel):
    label: str
    cosine: float
    probability: float  # softmax of the model's logits over the whole table


class Ranking(BaseModel):
    """A table's top terms; none while it is not ready (``status`` says why), and no
    status for a table that does not exist."""

    status: CustomTableStatus | None
    terms: list[RankedTerm] | None = None


def check_table(name: str, labels: Sequence[str], limits: CustomTableLimits) -> LabelTable:
    """The table for a named list; :class:`InvalidInput` naming what is wrong."""
    if not NAME.fullmatch(name):
        raise InvalidInput("name", "1 to 64 of a-z, 0-9, _ and -, starting with a letter or digit")
    if not labels:
        raise InvalidInput("labels", "must not be empty")
    if len(labels) > limits.max_labels:
        raise InvalidInput("labels", f"at most {limits.max_labels} terms, got {len(labels)}")
    for i, label in enumerate(labels):
        if not label.strip() or "\n" in label or "\r" in label:
            raise InvalidInput(f"labels[{i}]", "a term is one non-blank line")
        if len(label) > limits.max_label_chars:
            raise InvalidInput(f"labels[{i}]", f"longer than {limits.max_label_chars} characters")
    return LabelTable.of(name, [label.strip() for label in labels])


class CustomTables:
    """One model worker's custom tables: the directory's lists, each embedded in turn."""

    def __init__(self, directory: Path, cache: LabelCache, limits: CustomTableLimits) -> None:
        self.directory, self.cache, self.limits = directory, cache, limits
        self.tables: dict[str, LabelTable] = {}
        self.embedded: dict[str, TableEmbeddings] = {}
        self.errors: dict[str, str] = {}  # why a table is unusable: its file, or embedding
        # Each file as last read, keyed by name: ((mtime, size), its table or its problem).
        self._read: dict[str, tuple[tuple[int, int], LabelTable | str]] = {}
        self._queue: asyncio.Queue[LabelTable] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    def put(self, table: LabelTable) -> CustomTableStatus | None:
        """Store a checked list (replacing one of the same name) and embed it; None when
        there are already ``max_tables`` others."""
        files = self._files()
        if table.name not in files and len(files) >= self.limits.max_tables:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{table.name}{SUFFIX}"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("\n".join(table.labels) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        self.refresh()
        return self.status(table.name)

    def delete(self, name: str) -> bool:
        path = self.directory / f"{name}{SUFFIX}"
        if not NAME.fullmatch(name) or not path.is_file():
            return False
        path.unlink()
        self.refresh()
        return True

    def refresh(self) -> None:
        """Take up the directory's lists: new or changed ones are embedded, removed ones
        dropped. Called on every use: a directory listing, and only the files whose size
        or modification time changed are read again."""
        self._read = {name: self._read_file(name, path) for name, path in self._files().items()}
        found = {name: read for name, (_, read) in self._read.items() if not isinstance(read, str)}
        bad_files = {name: read for name, (_, read) in self._read.items() if isinstance(read, str)}
        # An embedding failure stays with its table until the table changes.
        self.errors = {name: e for name, e in self.errors.items() if name in found} | bad_files
        for name in set(self.tables) - set(found):
            self.tables.pop(name)
            self.embedded.pop(name, None)
        for name, table in found.items():
            if self.tables.get(name) != table:
                self.tables[name] = table
                self.embedded.pop(name, None)
                self.errors.pop(name, None)
                self._queue.put_nowait(table)
        if self._worker is None and not self._queue.empty():
            self._worker = asyncio.get_running_loop().create_task(self._embed_queued())

    def status(self, name: str) -> CustomTableStatus:
        return self._status_of(name)

    def statuses(self) -> list[CustomTableStatus]:
        self.refresh()
        return [self._status_of(name) for name in sorted(self._read)]

    def ranked(
        self, image_features: np.ndarray, name: str, top_k: int, logit_scale: float
    ) -> Ranking:
        """The table's top-k terms for the image, or why there are none."""
        self.refresh()
        if name not in self._read:
            return Ranking(status=None)
        embedded = self.embedded.get(name)
        if embedded is None:
            return Ranking(status=self._status_of(name))
        image = np.asarray(image_features, dtype=np.float32).reshape(1, -1)
        probabilities, cosines = (row[0] for row in rank(image, embedded.embeds, logit_scale))
        top = np.argsort(-cosines, kind="stable")[:top_k]
        terms = [
            RankedTerm(
                label=embedded.table.labels[i],
                cosine=float(cosines[i]),
                probability=float(probabilities[i]),
            )
            for i in top
        ]
        return Ranking(status=self._status_of(name), terms=terms)

    def _status_of(self, name: str) -> CustomTableStatus:
        table = self.tables.get(name)
        labels = len(table.labels) if table else 0
        if name in self.errors:
            error = self.errors[name]
            return CustomTableStatus(name=name, labels=labels, state="failed", error=error)
        state = "ready" if name in self.embedded else "building"
        return CustomTableStatus(name=name, labels=labels, state=state)

    def _read_file(self, name: str, path: Path) -> tuple[tuple[int, int], LabelTable | str]:
        """(the file's mtime and size, its checked table or what is wrong with it); the
        last reading again if the file did not change."""
        stat = path.stat()
        signature = (stat.st_mtime_ns, stat.st_size)
        last = self._read.get(name)
        if last is not None and last[0] == signature:
            return last
        labels = [line.strip() for line in path.read_text("utf-8", "replace").splitlines()]
        try:
            return signature, check_table(name, [label for label in labels if label], self.limits)
        except InvalidInput as exc:
            return signature, f"{path}: {exc}"

    def _files(self) -> dict[str, Path]:
        if not self.directory.is_dir():
            return {}
        return {
            path.name[: -len(SUFFIX)]: path
            for path in sorted(self.directory.glob(f"*{SUFFIX}"))
            if NAME.fullmatch(path.name[: -len(SUFFIX)])
        }

    async def _embed_queued(self) -> None:
        try:
            while not self._queue.empty():
                table = self._queue.get_nowait()
                if self.tables.get(table.name) != table:
                    continue  # replaced or removed meanwhile
                try:
                    embedded = await self.cache.embed(table)
                except Exception as exc:  # reported in the table's status
                    logger.exception("custom label table %s failed", table.name)
                    self.errors[table.name] = f"embedding failed: {exc}"
                    continue
                if self.tables.get(table.name) == table:
                    self.embedded[table.name] = embedded
        finally:
            self._worker = None
