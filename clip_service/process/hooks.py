"""Every private hook into BentoML and uvicorn, in one place, for the versions it was written
for: :func:`install` refuses to start the server on other versions (an upgrade must re-check
these, then update :data:`WRITTEN_FOR`); ``tests/test_hooks.py`` checks what each relies on.

* BentoML 1.4.39's ``TimeoutMiddleware`` never cancels its per-request timer: the handle
  keeps the request's context (its OpenTelemetry span and all set in it) referenced for the
  whole timeout, 600 s by default; measured under the hostile soak, the entry's memory grew
  820 MiB in 150 s. :func:`_timeout_call` is its ``__call__`` with the timer cancelled.
* uvicorn's h11 protocol has no deadline for a request's head: a client that sends partial
  headers a byte at a time holds a connection forever (slowloris). BentoML runs uvicorn with
  ``http="auto"``, which is h11 here (httptools is not installed);
  :class:`HeaderDeadlineProtocol` replaces it and closes a connection whose request head has
  not arrived ``HEADER_READ_TIMEOUT_S`` after it opened or after the previous answer.
* Graceful shutdown takes over uvicorn's SIGTERM handler (:func:`take_over_sigterm`): the
  handler is a bound ``Server.handle_exit``; its server's listening sockets are shut down
  (:func:`stop_listening`) before it is told to exit.
* BentoML 1.4.39's ``IORootModel.model_validate_json`` (the body of every API that takes
  one value, not named fields: ``/encode``'s list, ``/vectorize``'s bytes) builds the whole
  JSON schema of the body's type on every request, only to tell whether the body is the
  value itself (a string or file) or JSON. Profiled (``benchmarks/profile_served.py``), that
  was most of the entry's CPU for a one-text ``/encode``. :func:`_root_validate_json` decides
  once per class.
* The host ``bentoml serve`` binds without ``--host`` comes from BentoML's configuration
  container (:func:`bentoml_default_host`), for the warning about open servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import json
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

from _bentoml_sdk.io_models import IORootModel
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http import auto
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

WRITTEN_FOR = {"bentoml": "1.4.39", "uvicorn": "0.54.0", "h11": "0.16.0"}


def installed_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in WRITTEN_FOR}


def install(header_timeout_s: float) -> None:
    """Install the hooks, in every service process (all import the service module)."""
    if (found := installed_versions()) != WRITTEN_FOR:
        raise RuntimeError(
            f"clip_service.process.hooks was written for {WRITTEN_FOR}, found {found}: "
            "re-check each hook it lists against the new versions, then update WRITTEN_FOR"
        )
    TimeoutMiddleware.__call__ = _timeout_call  # type: ignore[method-assign]
    IORootModel.model_validate_json = classmethod(_root_validate_json)  # type: ignore[assignment]
    if auto.AutoHTTPProtocol is not H11Protocol and not issubclass(
        auto.AutoHTTPProtocol, HeaderDeadlineProtocol
    ):
        raise RuntimeError(
            f"uvicorn's auto protocol is {auto.AutoHTTPProtocol.__name__}, not h11: the "
            "request-head deadline (clip_service.process.hooks) does not apply to it"
        )
    auto.AutoHTTPProtocol = type(
        "HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"timeout_s": header_timeout_s}
    )


async def _timeout_call(
    self: TimeoutMiddleware, scope: Scope, receive: Receive, send: Send
) -> None:
    """BentoML 1.4.39's ``TimeoutMiddleware.__call__``, its timer cancelled at the end."""
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: Message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            body = {"error": f"Not able to process the request in {self.timeout} seconds"}
            await JSONResponse(body, status_code=504)(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


def _root_validate_json(
    cls: type[IORootModel], json_data: str | bytes | bytearray, **kwargs: Any
) -> IORootModel:
    """BentoML 1.4.39's ``IORootModel.model_validate_json`` with the schema lookup cached."""
    parsed = json_data if _takes_raw_body(cls) else json.loads(json_data)
    return cls.model_validate(parsed, **kwargs)


@functools.cache
def _takes_raw_body(cls: type[IORootModel]) -> bool:
    """Whether the API's one value is the body itself (a string or a file), not JSON."""
    return cls.model_json_schema().get("type") in ("string", "file")


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


SigtermHandler = Callable[[Any, int, FrameType | None], None]


def take_over_sigterm(handler: SigtermHandler) -> bool:
    """Call ``handler(server, signal, frame)`` in the running loop on SIGTERM instead of
    uvicorn's handler; whether there was one (not when served by something else)."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if not hasattr(server, "should_exit") or not hasattr(server, "handle_exit"):
        return False
    loop = asyncio.get_running_loop()

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(handler, server, sig, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    return True


def exit_server(server: Any, sig: int, frame: FrameType | None) -> None:
    """What uvicorn's own SIGTERM handler does: finish the requests in flight, then exit."""
    server.handle_exit(sig, frame)


def stop_listening(server: Any) -> None:
    """Shut down the listening sockets themselves, not only this process's descriptors (the
    arbiter's copies would otherwise queue new connections unanswered)."""
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets:
            with (
                contextlib.suppress(OSError),
                socket.socket(fileno=socket.dup(sock.fileno())) as dup,
            ):
                dup.shutdown(socket.SHUT_RD)


def bentoml_default_host() -> str:
    """The host ``bentoml serve`` binds without ``--host`` (0.0.0.0 unless configured)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.http.host.get())
