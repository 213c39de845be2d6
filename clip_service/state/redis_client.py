"""The Redis connection every store shares, and Redis' failures as the caller's error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from clip_service.errors import Unavailable

# Every key this project writes starts with this, so one Redis can hold other data too.
PREFIX = "clip-service:"
# How long a call may wait for Redis before the request is answered 503: a lost Redis must
# not hold requests (or the event loop's other work) for the client's default of forever.
TIMEOUT_S = 2.0
RETRY_AFTER_S = 5


def connect(url: str) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``), connecting on
    first use, in the event loop that uses it."""
    return redis.Redis.from_url(
        url,
        socket_timeout=TIMEOUT_S,
        socket_connect_timeout=TIMEOUT_S,
        health_check_interval=30,
        # After a Redis restart every pooled connection is dead, found so by its next
        # command: retried on a fresh connection, not answered 503 (the writes are
        # idempotent or guarded by the job's state).
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        decode_responses=True,
    )


@contextlib.contextmanager
def reachable(what: str) -> Iterator[None]:
    """Redis unreachable (down, restarting, cut off) or refusing (a password, protected
    mode, out of memory: its operator's to fix) as a retryable 503 naming ``what``."""
    try:
        yield
    except (RedisError, OSError) as exc:
        message = f"{what}: the state store (Redis) is unavailable ({exc}); retry shortly"
        raise Unavailable(message, RETRY_AFTER_S) from exc
