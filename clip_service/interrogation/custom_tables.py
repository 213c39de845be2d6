"""Your own label tables: named term lists, embedded once and ranked against images.

clip-interrogator's most requested feature is ranking an image against one's own terms
(its ``LabelTable(terms, name, ci)``). Here a list is kept where every model worker reads
it (:mod:`.table_lists`: a directory on one host, Redis across hosts), embedded as its
terms alone, exactly as ``LabelTable`` does, through the model's scheduler at background
priority, and cached by model and list hash like the built-in tables (so an unchanged list
is never embedded twice, and an edited one is embedded again). Every worker takes up new
and changed lists within :data:`REFRESH_S`, so an upload through any replica reaches all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel

from clip_service.errors import InvalidInput
from clip_service.interrogation.label_cache import LabelCache, TableEmbeddings
from clip_service.interrogation.labels import LabelTable
from clip_service.interrogation.table_lists import NAME, Read, TableLists
from clip_service.models.ranking import Scoring, rank

if TYPE_CHECKING:
    from clip_service.settings import Settings

logger = logging.getLogger(__name__)

# How often every worker takes up new, changed and removed lists (besides on each use).
REFRESH_S = 1.0


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
    probability: float  # by the model's rule: softmax over the whole table, or sigmoid


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
    """One model worker's custom tables: the stored lists, each embedded in turn."""

    def __init__(self, lists: TableLists, cache: LabelCache, limits: CustomTableLimits) -> None:
        self.lists, self.cache, self.limits = lists, cache, limits
        self.tables: dict[str, LabelTable] = {}
        self.embedded: dict[str, TableEmbeddings] = {}
        self.errors: dict[str, str] = {}  # why a table is unusable: its list, or embedding
        self._read: dict[str, Read] = {}
        self._queue: asyncio.Queue[LabelTable] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None

    def start(self) -> None:
        """Take up the stored lists now and every :data:`REFRESH_S` (in the serving loop)."""
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def put(self, table: LabelTable) -> CustomTableStatus | None:
        """Store a checked list (replacing one of the same name) and embed it; None when
        there are already ``max_tables`` others."""
        if not await self.lists.write(table, self.limits.max_tables):
            return None
        await self.refresh()
        return self._status_of(table.name)

    async def delete(self, name: str) -> bool:
        removed = await self.lists.remove(name)
        await self.refresh()
        return removed

    async def refresh(self) -> None:
        """Take up the stored lists: new or changed ones are embedded, removed ones dropped."""
        self._read = await self.lists.read(self._check)
        found = {name: read for name, read in self._read.items() if not isinstance(read, str)}
        bad_lists = {name: read for name, read in self._read.items() if isinstance(read, str)}
        # An embedding failure stays with its table until the table changes.
        self.errors = {name: e for name, e in self.errors.items() if name in found} | bad_lists
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

    async def statuses(self) -> list[CustomTableStatus]:
        await self.refresh()
        return [self._status_of(name) for name in sorted(self._read)]

    async def ranked(
        self, image_features: np.ndarray, name: str, top_k: int, scoring: Scoring
    ) -> Ranking:
        """The table's top-k terms for the image, or why there are none."""
        await self.refresh()
        if name not in self._read:
            return Ranking(status=None)
        embedded = self.embedded.get(name)
        if embedded is None:
            return Ranking(status=self._status_of(name))
        image = np.asarray(image_features, dtype=np.float32).reshape(1, -1)
        probabilities, cosines = (row[0] for row in rank(image, embedded.embeds, scoring))
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

    def _check(self, name: str, labels: list[str]) -> LabelTable:
        return check_table(name, labels, self.limits)

    async def _watch(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the store unreachable: the last lists stay in use
                logger.warning("custom label tables not refreshed: %s", exc)
            await asyncio.sleep(REFRESH_S)

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
