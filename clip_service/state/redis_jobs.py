"""Jobs in Redis (``REDIS_URL``): the store replicas on several hosts share, so that any
entry replica answers any poll, result or cancel.

Each job is a hash ``clip-service:job:<id>``; the unfinished ones are also members of the
sorted set ``clip-service:jobs:unfinished``, scored by the time their lease runs out, so a
sweep finds the lost ones with one range query. Every write that depends on a job's state
is one Lua script, so a sweep and a worker finishing the same job cannot interleave.
A finished job's hash expires ``ttl_s`` later (Redis forgets it, no sweep needed).

Why not a queue library (arq, saq, rq): their workers take jobs off a queue and run
registered functions on serialized arguments, where a job here is work a request has
already admitted and prepared (decoded pixels, a caption) on the replica that accepted
it, with a result the client polls for. What is shared is the job's state, not its work; a
job whose replica dies is failed with a clear error (:data:`~.job_store.GONE`) for the
client to submit again, which none of them would spare us (docs/scaling.md).
"""

from __future__ import annotations

import time
from collections.abc import Collection

import redis.asyncio as redis

from clip_service.state.job_store import FINISHED, GONE, JobRecord, State
from clip_service.state.redis_client import PREFIX, reachable

JOB = f"{PREFIX}job:"
UNFINISHED = f"{PREFIX}jobs:unfinished"

# KEYS: job hash, unfinished set. ARGV: id, status, now, result, error, ttl_s, finishing.
_UPDATE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated', ARGV[3], 'result', ARGV[4],
           'error', ARGV[5])
if ARGV[7] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
return 1
"""
# KEYS: unfinished set. ARGV: lease end, job key prefix, ids... -> the ids to stop.
_RENEW = """
local stop = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    if redis.call('HGET', ARGV[2] .. id, 'cancel') == '1' then table.insert(stop, id) end
  else
    table.insert(stop, id)
  end
end
return stop
"""
# KEYS: unfinished set. ARGV: now, error, ttl_s, job key prefix.
_SWEEP = """
local lost = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(lost) do
  local key = ARGV[4] .. id
  local status = redis.call('HGET', key, 'status')
  if status == 'queued' or status == 'running' then
    redis.call('HSET', key, 'status', 'failed', 'error', ARGV[2], 'updated', ARGV[1])
    redis.call('EXPIRE', key, ARGV[3])
  end
  redis.call('ZREM', KEYS[1], id)
end
return #lost
"""


class RedisJobStore:
    def __init__(self, client: redis.Redis, ttl_s: float) -> None:
        self.redis, self.ttl_s = client, ttl_s
        self._update = client.register_script(_UPDATE)
        self._renew = client.register_script(_RENEW)
        self._sweep = client.register_script(_SWEEP)

    async def count_unfinished(self) -> int:
        with reachable("jobs"):
            return await self.redis.zcard(UNFINISHED)

    async def add(self, job_id: str, kind: str, lease_s: float) -> None:
        now = time.time()
        fields = {"kind": kind, "status": "queued", "created": now, "updated": now, "cancel": 0}
        with reachable("jobs"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(JOB + job_id, mapping=fields)
                pipe.zadd(UNFINISHED, {job_id: now + lease_s})
                await pipe.execute()

    async def get(self, job_id: str) -> JobRecord | None:
        with reachable("jobs"):
            fields = ["kind", "status", "created", "updated", "error", "cancel"]
            kind, status, created, updated, error, cancel = await self.redis.hmget(
                JOB + job_id, fields
            )
        if status is None:
            return None
        created_at, updated_at = float(created), float(updated)
        return JobRecord(job_id, kind, status, created_at, updated_at, error or None, cancel == "1")

    async def result(self, job_id: str) -> str | None:
        with reachable("jobs"):
            return await self.redis.hget(JOB + job_id, "result") or None

    async def update(
        self, job_id: str, status: State, result: str | None = None, error: str | None = None
    ) -> bool:
        finishing = "1" if status in FINISHED else "0"
        args = [job_id, status, time.time(), result or "", error or "", round(self.ttl_s)]
        with reachable("jobs"):
            return bool(await self._update([JOB + job_id, UNFINISHED], [*args, finishing]))

    async def request_cancel(self, job_id: str) -> None:
        with reachable("jobs"):
            if await self.redis.zscore(UNFINISHED, job_id) is not None:
                await self.redis.hset(JOB + job_id, "cancel", 1)

    async def renew(self, job_ids: Collection[str], lease_s: float) -> set[str]:
        if not job_ids:
            return set()
        with reachable("jobs"):
            stop = await self._renew([UNFINISHED], [time.time() + lease_s, JOB, *job_ids])
        return set(stop)

    async def sweep(self) -> None:
        with reachable("jobs"):
            await self._sweep([UNFINISHED], [time.time(), GONE, round(self.ttl_s), JOB])
