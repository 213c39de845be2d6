"""Interrogation chain progress in Redis: written by the encoder replica running a job's
chain, read by whichever entry replica a client's poll reaches."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as redis

from clip_service.state.redis_client import PREFIX, reachable

logger = logging.getLogger(__name__)

KEY = f"{PREFIX}progress:"
# A chain's progress outlives no job: a job runs for at most JOB_TIMEOUT_S (an hour).
TTL_S = 3600


class RedisProgress:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._writes: set[asyncio.Task] = set()

    def report(self, key: str, step: int, steps: int) -> None:
        """Record a step without holding up the chain (written in the background; a lost
        write only leaves a poll one step behind)."""
        task = asyncio.get_running_loop().create_task(self._write(key, step, steps))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def read(self, key: str) -> tuple[int, int] | None:
        with reachable("job progress"):
            value = await self.redis.get(KEY + key)
        if value is None:
            return None
        step, steps = value.split("/")
        return int(step), int(steps)

    async def _write(self, key: str, step: int, steps: int) -> None:
        try:
            await self.redis.set(KEY + key, f"{step}/{steps}", ex=TTL_S)
        except Exception as exc:
            logger.warning("job progress not written to Redis: %s", exc)
