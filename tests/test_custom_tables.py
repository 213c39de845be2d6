"""Custom label tables across workers, on each store (a directory; a real redis-server):
a list put through one worker is embedded by another within a refresh (never asked), a
replaced list is embedded again, a removed one is dropped, the limit on tables holds across
workers, and a list stored by hand with a bad term is reported, not embedded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import redis

from clip_service.interrogation.custom_tables import (
    REFRESH_S,
    CustomTableLimits,
    CustomTables,
    check_table,
)
from clip_service.interrogation.label_cache import LabelCache
from clip_service.interrogation.table_lists import DirectoryTableLists, TableLists
from clip_service.state import redis_client
from clip_service.state.redis_tables import LISTS, RedisTableLists
from clip_service.testing.redis_server import redis_server

LIMITS = CustomTableLimits(max_tables=2, max_labels=100, max_label_chars=50)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> str:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(params=["directory", "redis"])
def lists_store(request, tmp_path):
    """A factory of one worker's view of the shared lists."""
    if request.param == "directory":
        return lambda: DirectoryTableLists(tmp_path / "lists")
    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushdb()
    return lambda: RedisTableLists(redis_client.connect(url))


def worker(lists: TableLists, cache_dir: Path) -> CustomTables:
    """One model worker's tables, with its own cache, embedding terms by their hash."""

    async def encode(texts: list[str]) -> np.ndarray:
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).random(8) for t in texts])

    cache = LabelCache(cache_dir, "test-model", encode, progress=False)
    return CustomTables(lists, cache, LIMITS)


async def ready(tables: CustomTables, name: str, within_s: float) -> list[str] | None:
    """The labels ``tables`` has embedded for ``name`` once it has, None if not in time;
    only its own watcher refreshes it meanwhile."""
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        if (embedded := tables.embedded.get(name)) is not None:
            return list(embedded.table.labels)
        await asyncio.sleep(0.05)
    return None


def test_a_list_put_through_one_worker_is_taken_up_by_another(lists_store, tmp_path) -> None:
    async def main() -> None:
        one, other = worker(lists_store(), tmp_path / "a"), worker(lists_store(), tmp_path / "b")
        one.start(), other.start()
        await one.put(check_table("pets", ["a cat", "a dog"], LIMITS))
        assert await ready(other, "pets", 3 * REFRESH_S) == ["a cat", "a dog"]

        await one.put(check_table("pets", ["a cat", "a dog", "a hamster"], LIMITS))
        assert await ready(one, "pets", 1) == ["a cat", "a dog", "a hamster"]
        deadline = asyncio.get_running_loop().time() + 3 * REFRESH_S
        while len(other.embedded.get("pets").table.labels) != 3:
            assert asyncio.get_running_loop().time() < deadline, "the edit was not taken up"
            await asyncio.sleep(0.05)

        await one.put(check_table("cars", ["a car"], LIMITS))
        assert await other.put(check_table("boats", ["a boat"], LIMITS)) is None  # 2 tables
        assert await other.delete("pets") and not await other.delete("pets")
        await asyncio.sleep(2 * REFRESH_S)
        assert "pets" not in one.tables and "pets" not in one.embedded
        assert [status.name for status in await one.statuses()] == ["cars"]

    asyncio.run(main())


def test_a_bad_stored_list_is_reported_not_embedded(lists_store, tmp_path, request) -> None:
    async def main() -> None:
        if isinstance(lists_store(), RedisTableLists):
            client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
            client.hset(LISTS, "long", "ok\n" + "x" * 51 + "\n")
        else:
            (tmp_path / "lists").mkdir()
            (tmp_path / "lists" / "long.txt").write_text("ok\n" + "x" * 51 + "\n")
        tables = worker(lists_store(), tmp_path / "a")
        (status,) = await tables.statuses()
        assert status.state == "failed" and "longer than 50 characters" in status.error
        assert "long" not in tables.embedded

    asyncio.run(main())
