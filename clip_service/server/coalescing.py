"""Requests' encoder calls that arrive while others are in flight go out as one call.

Each call to the encoder costs both services a whole HTTP exchange: BentoML's request
handling, (de)serialisation and the event loop's work for it, which for a one-text request is
more than the model's share (``benchmarks/results/profile_served.md``). The encoder batches
across calls anyway, so the entry keeps at most :data:`IN_FLIGHT` calls of one kind and
priority in flight, and what arrives meanwhile goes out together as the next call: a burst of
one-text requests costs a few hops, not one per request.

The guarantees of a call per request hold per request:

* priorities: calls are joined within one priority only, so interactive requests never
  queue behind an interrogation's or a label table's call;
* errors: the items were validated before (``encoding.py``), so what can fail is the call
  (the encoder busy, unreachable), and it fails each request in it, as it would have alone;
* cancellation: a request that goes away (its client hung up, its deadline passed) stops
  waiting at once; the call itself is cancelled, stopping the model's work on it, when no
  request in it is still waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from clip_service.scheduling import Priority

# Calls in flight per kind and priority. One: what arrives meanwhile goes in the next call,
# which the encoder runs as one batch. Measured (one-text /encode, 2 cores): two in flight
# let a lone request go ahead as a batch of its own, and 8 clients got 23% less done.
IN_FLIGHT = 1

Part = TypeVar("Part", list[str], np.ndarray)


@dataclass(eq=False)
class _Waiter(Generic[Part]):
    part: Part
    answer: asyncio.Future[np.ndarray]
    call: asyncio.Task[None] | None = None
    shared_with: list[_Waiter[Part]] = field(default_factory=list)


class Coalescer(Generic[Part]):
    """One encoder API with its concurrent calls joined; awaited like the API itself."""

    def __init__(
        self,
        send: Callable[[Part, Priority], Awaitable[np.ndarray]],
        join: Callable[[Sequence[Part]], Part],
        max_items: int,
    ) -> None:
        self._send, self._join, self.max_items = send, join, max_items
        self._pending: dict[Priority, list[_Waiter[Part]]] = {}
        self._in_flight: dict[Priority, int] = {}
        self._calls: set[asyncio.Task[None]] = set()

    async def __call__(self, part: Part, priority: Priority = Priority.INTERACTIVE) -> np.ndarray:
        if len(part) >= self.max_items:  # a full batch of its own: nothing to join
            return await self._send(part, priority)
        waiter = _Waiter(part, asyncio.get_running_loop().create_future())
        self._pending.setdefault(priority, []).append(waiter)
        self._dispatch(priority)
        try:
            return await waiter.answer
        except asyncio.CancelledError:
            self._leave(priority, waiter)
            raise

    def _dispatch(self, priority: Priority) -> None:
        pending = self._pending.get(priority, [])
        while pending and self._in_flight.get(priority, 0) < IN_FLIGHT:
            taken = [pending.pop(0)]
            size = len(taken[0].part)
            while pending and size + len(pending[0].part) <= self.max_items:
                size += len(pending[0].part)
                taken.append(pending.pop(0))
            self._in_flight[priority] = self._in_flight.get(priority, 0) + 1
            call = asyncio.get_running_loop().create_task(self._call(priority, taken))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)
            for waiter in taken:
                waiter.call, waiter.shared_with = call, taken

    async def _call(self, priority: Priority, taken: list[_Waiter[Part]]) -> None:
        try:
            rows = await self._send(self._join([w.part for w in taken]), priority)
        except asyncio.CancelledError:
            for waiter in taken:
                waiter.answer.cancel()
            raise
        except Exception as exc:  # the call's failure is each request's
            for waiter in taken:
                if not waiter.answer.done():
                    waiter.answer.set_exception(exc)
        else:
            start = 0
            for waiter in taken:
                end = start + len(waiter.part)
                if not waiter.answer.done():
                    waiter.answer.set_result(rows[start:end])
                start = end
        finally:
            self._in_flight[priority] -= 1
            self._dispatch(priority)

    def _leave(self, priority: Priority, waiter: _Waiter[Part]) -> None:
        """A request stopped waiting: out of the queue, or, if it was the last one waiting
        for its call, the call cancelled."""
        pending = self._pending.get(priority, [])
        if waiter in pending:
            pending.remove(waiter)
        elif waiter.call is not None and all(w.answer.done() for w in waiter.shared_with):
            waiter.call.cancel()


def join_texts(parts: Sequence[list[str]]) -> list[str]:
    return [text for part in parts for text in part]


class CoalescingEncoder:
    """The encoder client with ``encode_texts`` and ``encode_images`` coalesced; its other
    APIs as they are."""

    def __init__(self, client: Any, text_max_batch: int, image_max_batch: int) -> None:
        self._client = client

        async def send_texts(texts: list[str], priority: Priority) -> np.ndarray:
            return await client.encode_texts(texts=texts, priority=priority)

        async def send_images(pixels: np.ndarray, priority: Priority) -> np.ndarray:
            return await client.encode_images(pixels=pixels, priority=priority)

        self._texts = Coalescer(send_texts, join_texts, text_max_batch)
        self._images = Coalescer(send_images, np.concatenate, image_max_batch)

    async def encode_texts(
        self, texts: list[str], priority: Priority = Priority.INTERACTIVE
    ) -> np.ndarray:
        return await self._texts(list(texts), priority)

    async def encode_images(
        self, pixels: np.ndarray, priority: Priority = Priority.INTERACTIVE
    ) -> np.ndarray:
        return await self._images(pixels, priority)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)
