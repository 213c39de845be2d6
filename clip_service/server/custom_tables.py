"""The entry's side of custom label tables (:mod:`clip_service.interrogation.custom_tables`):
lists checked here, stored and embedded by the encoder, and their rankings turned into
answers or into the error a caller can act on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from clip_service.errors import InvalidInput, Unavailable
from clip_service.interrogation.custom_tables import (
    CustomTableLimits,
    CustomTableStatus,
    RankedTerm,
    Ranking,
    check_table,
)

# Seconds a caller is told to wait for a table being embedded.
RETRY_S = 10


class CustomTablesEncoder(Protocol):
    """The custom-table API of the ``ClipEncoder`` service (keyword arguments)."""

    async def custom_tables(self) -> list[CustomTableStatus]: ...
    async def put_custom_table(
        self, *, name: str, labels: list[str]
    ) -> CustomTableStatus | None: ...
    async def delete_custom_table(self, *, name: str) -> bool: ...
    async def rank_custom_tables(
        self, *, image_features: np.ndarray, names: list[str], top_k: int
    ) -> dict[str, Ranking]: ...


class RemoteCustomTables:
    def __init__(self, encoder: CustomTablesEncoder, limits: CustomTableLimits) -> None:
        self.encoder, self.limits = encoder, limits

    async def put(self, name: str, labels: Sequence[str]) -> CustomTableStatus:
        table = check_table(name, labels, self.limits)
        status = await self.encoder.put_custom_table(name=table.name, labels=list(table.labels))
        if status is None:
            raise InvalidInput(
                "name", f"there are {self.limits.max_tables} custom tables, the limit"
            )
        return status

    async def all(self) -> list[CustomTableStatus]:
        return await self.encoder.custom_tables()

    async def delete(self, name: str) -> bool:
        return await self.encoder.delete_custom_table(name=name)

    async def check(self, names: Sequence[str], field: str) -> None:
        """Refuse, before any model work, names that are not usable tables now: a 400
        naming ``field`` for a table that does not exist or is unusable, a 503 while one is
        being embedded."""
        if not names:
            return
        statuses = {status.name: status for status in await self.encoder.custom_tables()}
        for name in dict.fromkeys(names):
            _check_usable(name, statuses.get(name), field)

    async def rank(
        self, image_features: np.ndarray, names: Sequence[str], top_k: int, field: str
    ) -> dict[str, list[RankedTerm]]:
        """Each named table's top-k terms; errors as :meth:`check`'s."""
        if not names:
            return {}
        rankings = await self.encoder.rank_custom_tables(
            image_features=image_features, names=list(dict.fromkeys(names)), top_k=top_k
        )
        out = {}
        for name, ranking in rankings.items():
            _check_usable(name, ranking.status, field)
            if ranking.terms is None:  # replaced since the check: being embedded again
                raise Unavailable(f"label table {name!r} is being embedded", RETRY_S)
            out[name] = ranking.terms
        return out


def _check_usable(name: str, status: CustomTableStatus | None, field: str) -> None:
    if status is None:
        raise InvalidInput(field, f"no custom label table {name!r}; see GET /label-tables")
    if status.state == "failed":
        raise InvalidInput(field, f"label table {name!r} is unusable: {status.error}")
    if status.state != "ready":
        message = f"label table {name!r}: its {status.labels} terms are being embedded"
        raise Unavailable(message, RETRY_S)
