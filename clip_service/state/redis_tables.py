"""The custom label tables' lists in Redis (``REDIS_URL``): one hash, name -> list, and a
version counter every write bumps, so each encoder replica re-reads the lists only when
they changed (one ``GET`` a second otherwise) and embeds a new or edited one itself."""

from __future__ import annotations

import redis.asyncio as redis

from clip_service.interrogation.labels import LabelTable
from clip_service.interrogation.table_lists import CheckTable, Read, parse, unparse
from clip_service.state.redis_client import PREFIX, reachable

LISTS = f"{PREFIX}custom-tables"
VERSION = f"{PREFIX}custom-tables:version"

# KEYS: lists, version. ARGV: name, list, max tables.
_WRITE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and
   redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
"""


class RedisTableLists:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._write = client.register_script(_WRITE)
        self._version: str | None = None
        self._lists: dict[str, Read] = {}

    async def read(self, check: CheckTable) -> dict[str, Read]:
        with reachable("custom label tables"):
            version = await self.redis.get(VERSION)
            if version != self._version or version is None:
                stored = await self.redis.hgetall(LISTS)
                self._lists = {
                    name: parse(name, text, check, f"Redis {LISTS}[{name}]")
                    for name, text in sorted(stored.items())
                }
                self._version = version
        return dict(self._lists)

    async def write(self, table: LabelTable, max_tables: int) -> bool:
        with reachable("custom label tables"):
            written = await self._write([LISTS, VERSION], [table.name, unparse(table), max_tables])
        return bool(written)

    async def remove(self, name: str) -> bool:
        with reachable("custom label tables"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(LISTS, name)
                pipe.incr(VERSION)
                removed, _ = await pipe.execute()
        return bool(removed)
