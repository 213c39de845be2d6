"""A deadline for a request's line and headers (uvicorn has none for HTTP/1.1 with h11).

BentoML 1.4.39 runs uvicorn with ``http="auto"``, which is h11 when httptools is not
installed (it is not a dependency here). uvicorn's h11 protocol starts no timer when a
connection opens and cancels its keep-alive timer on every byte received, so a client
that opens connections and sends partial headers, a byte now and then, holds each one
forever (slowloris); ``timeout_keep_alive`` only covers the silence after an answer. No
public setting of uvicorn or BentoML bounds it.

:func:`install` replaces the class uvicorn resolves for ``http="auto"`` with a subclass
that closes a connection whose request head has not arrived ``timeout_s`` after the
connection opened or after the previous answer ended (a body still being sent after the
answer, which nobody reads, counts too). That relies on uvicorn internals, so it is
installed only on the exact versions it was written for (:data:`WRITTEN_FOR`), with a
WARNING otherwise; ``tests/test_connection_deadline.py`` fails when an upgrade changes
what it relies on, and ``tests/test_served_hardening.py`` checks the effect over sockets.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging

from uvicorn.protocols.http import auto
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

# The versions whose internals this module relies on: uvicorn's auto protocol attribute
# and H11Protocol's hooks, h11's connection states, BentoML's uvicorn.Config(http="auto").
WRITTEN_FOR = {"uvicorn": "0.54.0", "h11": "0.16.0", "bentoml": "1.4.39"}


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections that keep a request head waiting."""

    timeout_s: float = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self._serving():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._serving():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _serving(self) -> bool:
        """A request head has arrived and its answer is not complete: the app has it."""
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self._serving() and not self.transport.is_closing():
            # DEBUG: a slow-client flood would otherwise flood the log as well.
            logger.debug("closing a connection: no complete request head in %g s", self.timeout_s)
            self.transport.close()


def installed_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in WRITTEN_FOR}


def install(timeout_s: float) -> bool:
    """Make uvicorn's ``http="auto"`` use :class:`HeaderDeadlineProtocol`; whether it did."""
    if auto.AutoHTTPProtocol is not H11Protocol and not issubclass(
        auto.AutoHTTPProtocol, HeaderDeadlineProtocol
    ):
        logger.warning(
            "request-head deadline not installed: uvicorn's auto protocol is %s, not h11",
            auto.AutoHTTPProtocol.__name__,
        )
        return False
    if (found := installed_versions()) != WRITTEN_FOR:
        logger.warning(
            "request-head deadline not installed: written for %s, found %s; slow clients "
            "can hold connections open",
            WRITTEN_FOR,
            found,
        )
        return False
    auto.AutoHTTPProtocol = type(
        "HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"timeout_s": timeout_s}
    )
    return True
