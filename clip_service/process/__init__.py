"""What every service process of the bundle runs, however it was started.

``bentoml serve`` (all services), ``bentoml serve runners.clip_encoder:ClipEncoder`` (a
split model service) and a BentoML worker started by the arbiter each import one service
module, and every service module imports ``runners.model_service``, which calls
:func:`prepare` at import: so every process has the same
version gate, private hooks (:mod:`.hooks`), logging (:mod:`.logs`), and, through
:func:`guard_service`, the same drain on SIGTERM (:mod:`.drain`) and the same cancellation
of work whose caller has gone (:mod:`.disconnect`).
"""

from __future__ import annotations

from typing import Any

from clip_service.process import hooks, logs
from clip_service.process.disconnect import CancelOnDisconnect
from clip_service.process.drain import GracefulShutdown

_prepared = False


def prepare(header_read_timeout_s: float) -> None:
    """Version gate, hooks and logging for this process (once; later calls do nothing)."""
    global _prepared
    if _prepared:
        return
    logs.configure()
    hooks.install(header_read_timeout_s)
    _prepared = True


def guard_service(service: Any, *, quiet_s: float, max_drain_s: float) -> None:
    """A model service's ASGI guards: serve on until idle after SIGTERM, and stop the work of
    a request whose caller disconnected (the entry gave up: its deadline, its client gone,
    a cancelled job)."""
    service.add_asgi_middleware(GracefulShutdown, quiet_s=quiet_s, max_drain_s=max_drain_s)
    service.add_asgi_middleware(CancelOnDisconnect)
