"""Admission for long work: a bounded number at once, a bounded queue, refusals up front.

An interrogation holds the model for seconds (tiny models) to minutes (best mode, a
full-size model on a CPU). Without a bound, N concurrent interrogations take turns on the
model and each takes about N times as long: past capacity they all pass their deadline and
answer 504 together, after the model has worked for nobody. :class:`Admission` runs at most
``slots`` at once and queues at most ``max_queued`` behind them, first come first served;
a new one is refused at once (:class:`~clip_service.scheduling.Overloaded`, answered 503 or
429 with ``Retry-After``) when the queue is full, or when the work ahead of it and its own
expected time would take it past its deadline. Durations are learned per kind of work,
per unit of its cost (a best-mode chain costs about one unit per flavor).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from clip_service.scheduling.scheduler import Overloaded

# Work is admitted only when it should finish within this share of its deadline: its
# duration is a learned average, and what runs beside it (captions, interactive requests)
# varies, so a piece estimated a quarter too short still answers in time.
DEADLINE_SHARE = 0.8


@dataclass(eq=False)
class _Ticket:
    kind: str
    cost: float
    expected_s: float  # model time it needs alone
    admitted: asyncio.Future[None]
    service_s: float = 0.0  # model time it has had so far (shared with the others running)


class Admission:
    """At most ``slots`` pieces of work at once and ``max_queued`` waiting, FIFO.

    The work shares one model: pieces running together each progress at the model's speed
    divided by their number. So the time a new piece would finish in is all the work ahead
    of it plus its own, whatever the slots; slots only let pieces interleave (a short one
    need not wait for a long one to end).
    """

    def __init__(self, slots: int, max_queued: int, smoothing: float = 0.3) -> None:
        if slots < 1 or max_queued < 0:
            raise ValueError("slots >= 1 and max_queued >= 0")
        self.slots, self.max_queued, self.smoothing = slots, max_queued, smoothing
        self._running: list[_Ticket] = []
        self._queued: list[_Ticket] = []
        self._per_unit: dict[str, float] = {}  # learned model seconds per cost unit, per kind
        self._accounted_at = time.monotonic()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._queued)

    def expected_s(self, kind: str, cost: float) -> float:
        """Expected model seconds of one piece of work (0 before any has finished)."""
        return self._per_unit.get(kind, 0.0) * cost

    def work_ahead_s(self) -> float:
        """Model seconds of the work running (what is left of it) and queued."""
        self._account()
        running = sum(max(0.0, t.expected_s - t.service_s) for t in self._running)
        return running + sum(t.expected_s for t in self._queued)

    @asynccontextmanager
    async def admitted(
        self, kind: str, cost: float = 1.0, time_left_s: float | None = None
    ) -> AsyncIterator[None]:
        """Hold a slot for the body; :class:`Overloaded` at once if there will be none in
        time. ``time_left_s``: the caller's deadline, from now (None: no deadline)."""
        ticket = _Ticket(
            kind, cost, self.expected_s(kind, cost), asyncio.get_running_loop().create_future()
        )
        self._refuse_unless_room(ticket, time_left_s)
        if len(self._running) < self.slots and not self._queued:
            self._start(ticket)
        else:
            self._queued.append(ticket)
            try:
                await ticket.admitted
            except BaseException:
                if ticket in self._queued:
                    self._queued.remove(ticket)
                elif ticket in self._running:  # admitted just as it was cancelled
                    self._finish(ticket, learn=False)
                raise
        completed = False
        try:
            yield
            completed = True
        finally:
            self._finish(ticket, learn=completed)

    def _refuse_unless_room(self, ticket: _Ticket, time_left_s: float | None) -> None:
        ahead = self.work_ahead_s()
        if len(self._queued) >= self.max_queued and len(self._running) >= self.slots:
            first_free = min(max(0.0, t.expected_s - t.service_s) for t in self._running)
            raise Overloaded(first_free, f"{self.queued} already queued, the limit")
        if time_left_s is not None and ahead + ticket.expected_s > time_left_s * DEADLINE_SHARE:
            raise Overloaded(
                max(1.0, ahead + ticket.expected_s - time_left_s * DEADLINE_SHARE),
                f"with the work ahead it would take about {ahead + ticket.expected_s:.0f} s, "
                f"past its deadline ({time_left_s:.0f} s)",
            )

    def _account(self) -> None:
        """Credit each running piece with its share of the model since the last event."""
        now = time.monotonic()
        if self._running:
            share = (now - self._accounted_at) / len(self._running)
            for ticket in self._running:
                ticket.service_s += share
        self._accounted_at = now

    def _start(self, ticket: _Ticket) -> None:
        self._account()
        self._running.append(ticket)
        if not ticket.admitted.done():
            ticket.admitted.set_result(None)

    def _finish(self, ticket: _Ticket, learn: bool) -> None:
        self._account()
        self._running.remove(ticket)
        if learn and ticket.cost > 0:
            sample = ticket.service_s / ticket.cost
            old = self._per_unit.get(ticket.kind)
            self._per_unit[ticket.kind] = (
                sample if old is None else old + self.smoothing * (sample - old)
            )
        while self._queued and len(self._running) < self.slots:
            self._start(self._queued.pop(0))
