"""The label tables of one model, made once in the background and shared by every caller.

The build starts when the model worker starts and runs at the scheduler's lowest priority, so
it never delays a request. Callers never start or cancel it: they wait for it (shielded, so a
caller that gives up leaves the build running) or are told how far it has come.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, computed_field

from clip_service.interrogation.label_cache import LabelCache, LabelTables, TableEmbeddings
from clip_service.interrogation.labels import LabelTable

logger = logging.getLogger(__name__)

# After a failed build (an encoder error, a full disk), the next attempt starts this much later.
RETRY_AFTER_FAILURE_S = 30.0


class TablesStatus(BaseModel):
    """How far the label tables are; what ``/model`` shows and a refused request quotes."""

    state: Literal["building", "ready", "failed"]
    labels_done: int
    labels_total: int
    # While building: whether labels are being encoded here (else tables are being loaded
    # or downloaded, which is quick), and the time left once a rate has been measured.
    encoding: bool = False
    eta_s: float | None = None
    error: str | None = None  # the last failure, while retrying
    origins: dict[str, str] = {}  # table -> "hub" (published) or "built" (encoded here)

    def due_within(self, seconds: float) -> bool:
        """Whether the tables should be ready within ``seconds``: worth waiting for.

        Loading or downloading counts as due; encoding only once its measured rate says so.
        """
        if self.state != "building":
            return self.state == "ready"
        if not self.encoding:
            return True
        return self.eta_s is not None and self.eta_s <= seconds

    @computed_field  # type: ignore[prop-decorator]
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
        self._encode = cache.encode
        cache.encode = self._encode_counting

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
            encoding=self._encoding_since is not None,
            eta_s=self._eta_s(),
            error=self._error,
        )

    def _eta_s(self) -> float | None:
        """Seconds left at the encoding rate so far (None before a chunk was encoded)."""
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

    async def _encode_counting(self, texts: Sequence[str]) -> np.ndarray:
        """The cache's encoder, counting progress: the rate runs from the first chunk's start."""
        if self._encoding_since is None:
            self._encoding_since = time.monotonic()
        features = await self._encode(texts)
        self.done += len(texts)
        self._encoded += len(texts)
        return features


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
