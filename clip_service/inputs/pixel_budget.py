"""A bound on the pixels being decoded at once in a process.

A 40-megapixel palette PNG is about 5 KB on the wire and about 200 MB once decoded and
converted (more for 16-bit and float images): decoded all at once, the 40 images of one
258 KB request took 18 GiB. Decoding holds this budget, weighted by each image's pixel
count (read from its header), until the image has become the model's input pixels and
has been dropped; so a process holds the decoded pixels of at most ``capacity`` pixels,
whatever its requests, and small images still decode many at a time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PixelBudget:
    """A weighted semaphore of pixels, granted first come first served."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity >= 1")
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Hold ``pixels`` of the budget for the body (an image larger than the whole
        budget holds all of it, alone)."""
        amount = max(1, min(pixels, self.capacity))
        if self._waiters or self.in_use + amount > self.capacity:
            granted = asyncio.get_running_loop().create_future()
            self._waiters.append((amount, granted))
            try:
                await granted
            except BaseException:
                if granted.done() and not granted.cancelled():
                    self._release(amount)  # granted just as it was cancelled
                else:
                    if (amount, granted) in self._waiters:
                        self._waiters.remove((amount, granted))
                    self._grant()  # those behind it may fit now
                raise
        else:
            self.in_use += amount
        try:
            yield
        finally:
            self._release(amount)

    def _release(self, amount: int) -> None:
        self.in_use -= amount
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.in_use + self._waiters[0][0] <= self.capacity:
            amount, granted = self._waiters.popleft()
            if granted.done():  # its task was cancelled and has yet to run: skip it
                continue
            self.in_use += amount
            granted.set_result(None)
