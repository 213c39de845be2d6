"""The label tables of one model, made once in the background and shared by every caller.

The build starts when the model worker starts and runs at the scheduler's lowest priority, so
it never delays a request. Callers never start or cancel it: they wait for it (shielded, so a
caller that gives up leaves the build running) or are told how far it has come.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel

from .label_cache import LabelCache, LabelTables, TableEmbeddings
from .labels import LabelTable

logger = logging.getLogger(__name__)

# After a failed build (an encoder error, a full disk), the next attempt starts this much later.
RETRY_AFTER_FAILURE_S = 30.0


class TablesStatus(BaseModel):
    """How far the label tables are; what ``/model`` shows and a refused request quotes."""

    state: Literal["building", "ready", "failed"]
    labels_done: int
    labels_total: int
    eta_s: float | None = None  # while building, once a rate has been measured
    error: str | None = None  # the last failure, while retrying
    origins: dict[str, str] = {}  # table -> "hub" (published) or "built" (encoded here)

    @property
    def progress(self) -> str:
        """E.g. ``"41,000 of 111,908 labels embedded (37%), about 9 min left"``."""
        share = self.labels_done / max(self.labels_total, 1)
        text = f"{self.labels_done:,} of {self.labels_total:,} labels embedded ({share:.0%})"
        if self.eta_s is not None:
            text += f", about {_duration(self.eta_s)} left"
        return text


class TableBuild:
    """Loads, fetches or encodes ``tables`` through ``cache``, once, in a background task."""

    def __init__(self, cache: LabelCache, tables: Mapping[str, LabelTable]) -> None:
        self.cache, self.tables = cache, dict(tables)
        self.total = sum(len(t.labels) for t in self.tables.values())
        self.done = 0
        self._encoded = 0  # labels encoded by this build (the rate's numerator)
        self._encoding_since: float | None = None
        self._error: str | None = None
        self._result: LabelTables | None = None
        self._task: asyncio.Task[LabelTables] | None = None
        cache.on_encoded = self._count_encoded

    def start(self) -> None:
        """Begin in the running event loop (once; later calls do nothing)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def ready(self) -> LabelTables | None:
        return self._result

    def status(self) -> TablesStatus:
        if self._result is not None:
            return TablesStatus(
                state="ready",
                labels_done=self.total,
                labels_total=self.total,
                origins=self._result.origins,
            )
        return TablesStatus(
            state="failed" if self._error else "building",
            labels_done=self.done,
            labels_total=self.total,
            eta_s=self.eta_s(),
            error=self._error,
        )

    def eta_s(self) -> float | None:
        """Seconds left at the rate measured so far (None before the first encoded chunk)."""
        if self._result is not None:
            return 0.0
        if not self._encoded or self._encoding_since is None:
            return None
        rate = self._encoded / max(time.monotonic() - self._encoding_since, 1e-9)
        return (self.total - self.done) / rate

    async def wait(self, timeout_s: float) -> LabelTables | None:
        """The tables, waiting at most ``timeout_s``; None if they are not ready by then.

        The build is shielded: a waiter that times out or is cancelled does not stop it.
        """
        if self._result is not None:
            return self._result
        self.start()
        assert self._task is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            return None

    async def _run(self) -> LabelTables:
        while True:
            self.done, self._encoded, self._encoding_since = 0, 0, None
            try:
                result = await self._embed_all()
            except Exception as exc:  # retried: the build is never abandoned
                self._error = f"{type(exc).__name__}: {exc}"
                logger.exception("label tables: build failed; retrying")
                await asyncio.sleep(RETRY_AFTER_FAILURE_S)
                continue
            self._result, self._error = result, None
            logger.info("label tables ready: %s", result.origins)
            return result

    async def _embed_all(self) -> LabelTables:
        def count_unencoded(table: TableEmbeddings) -> None:
            if table.cached or table.origin == "hub":
                self.done += len(table.table.labels)

        return await self.cache.embed_all(self.tables, on_table=count_unencoded)

    def _count_encoded(self, n: int) -> None:
        """Progress after each encoded chunk; the rate counts from the end of the first."""
        self.done += n
        if self._encoding_since is None:
            self._encoding_since = time.monotonic()
        else:
            self._encoded += n


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
