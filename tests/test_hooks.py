"""Every private hook into BentoML and uvicorn (clip_service/process/hooks.py): these tests
fail when an upgrade changes what a hook relies on, and the hooks refuse to install on
versions they were not written for (tests/test_served_hardening.py and test_shutdown.py
check their effects over real sockets and signals)."""

from __future__ import annotations

import ast
import asyncio
import contextvars
import gc
import hashlib
import inspect
import signal
import weakref

import _bentoml_impl.worker.service as bentoml_worker
import pytest
import uvicorn.config
import uvicorn.server
from _bentoml_sdk import io_models
from _bentoml_sdk.io_models import IORootModel, ensure_io_descriptor
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from pydantic import TypeAdapter
from uvicorn.protocols.http import auto
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from clip_service.process import hooks
from clip_service.process.hooks import WRITTEN_FOR, HeaderDeadlineProtocol, install

# BentoML 1.4.39's TimeoutMiddleware; another version needs the fix reviewed.
UPSTREAM_SHA256 = "4dab3e6bdd06efc590294d89beed9a399be6959b62bce9da024b33292e1be34b"


def test_installed_versions_are_the_ones_the_hooks_were_written_for():
    # On an upgrade: re-read what each hook relies on (the tests below), then update
    # WRITTEN_FOR.
    assert hooks.installed_versions() == WRITTEN_FOR


def test_install_refuses_other_versions_loudly(monkeypatch):
    monkeypatch.setattr(auto, "AutoHTTPProtocol", H11Protocol)
    monkeypatch.setattr(hooks, "installed_versions", lambda: {**WRITTEN_FOR, "uvicorn": "9"})
    with pytest.raises(RuntimeError, match=r"written for .* found .*'uvicorn': '9'"):
        install(2)
    assert auto.AutoHTTPProtocol is H11Protocol


def test_install_refuses_another_http_protocol(monkeypatch):
    other = type("HttpToolsProtocol", (), {})  # what "auto" is when httptools is installed
    monkeypatch.setattr(auto, "AutoHTTPProtocol", other)
    with pytest.raises(RuntimeError, match="not h11"):
        install(2)


def test_uvicorn_sigterm_handler_is_a_bound_server_method():
    """take_over_sigterm finds the server through uvicorn's handler, and stop_listening and
    exit_server use its sockets and its own exit."""
    source = inspect.getsource(uvicorn.server.Server)
    assert "signal.signal(sig, self.handle_exit)" in source
    assert callable(uvicorn.server.Server.handle_exit)
    assert "self.servers" in source and "should_exit" in source
    assert signal.SIGTERM in uvicorn.server.HANDLED_SIGNALS


class Marker:
    """Set in a context variable before each request: alive while its context is."""


MARKER: contextvars.ContextVar[Marker] = contextvars.ContextVar("marker")
ALIVE: weakref.WeakSet[Marker] = weakref.WeakSet()


async def _answer(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _slow(scope, receive, send) -> None:
    await asyncio.sleep(10)


async def _requests(app, count: int) -> list[int]:
    statuses = []

    async def send(message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    for _ in range(count):
        marker = Marker()
        ALIVE.add(marker)
        MARKER.set(marker)
        del marker
        await app({"type": "http", "path": "/x"}, receive, send)
    return statuses


def test_bentoml_timeout_middleware_is_the_version_the_fix_copies():
    source = inspect.getsource(TimeoutMiddleware)
    assert hashlib.sha256(source.encode()).hexdigest() == UPSTREAM_SHA256, source


def test_finished_requests_leave_no_context_behind(monkeypatch):
    monkeypatch.setattr(auto, "AutoHTTPProtocol", H11Protocol)
    install(10)

    async def run() -> int:
        statuses = await _requests(TimeoutMiddleware(_answer, timeout=600), 50)
        assert statuses == [200] * 50
        await asyncio.sleep(0)  # the loop drops cancelled timers on its next turn
        gc.collect()
        return len(ALIVE)

    assert asyncio.run(run()) <= 1  # the last one is still set in this context


def test_a_request_past_the_timeout_is_still_a_504(monkeypatch):
    monkeypatch.setattr(auto, "AutoHTTPProtocol", H11Protocol)
    install(10)
    statuses = asyncio.run(_requests(TimeoutMiddleware(_slow, timeout=0.05), 1))
    assert statuses == [504]


def test_bentoml_starts_uvicorn_with_the_auto_protocol():
    tree = ast.parse(inspect.getsource(bentoml_worker.main.callback))
    configs = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "uvicorn.Config"
    ]
    assert len(configs) == 1
    assert "http" not in {keyword.arg for keyword in configs[0].keywords}
    assert "uvicorn_extra_options['http']" not in ast.unparse(tree)
    assert uvicorn.config.HTTP_PROTOCOLS["auto"] == "uvicorn.protocols.http.auto:AutoHTTPProtocol"


def test_uvicorn_h11_protocol_has_the_hooks_it_extends():
    for method in ("connection_made", "handle_events", "on_response_complete", "connection_lost"):
        assert callable(getattr(H11Protocol, method)), method
    init = inspect.getsource(H11Protocol.__init__)
    assert "self.cycle" in init and "self.loop" in init and "self.transport" in init
    handle = inspect.getsource(H11Protocol.handle_events)
    assert "on_response=self.on_response_complete" in handle
    assert "self.response_complete = False" in inspect.getsource(RequestResponseCycle.__init__)
    # No timer of its own starts when a connection opens (else this hook is redundant).
    assert "call_later" not in inspect.getsource(H11Protocol.connection_made)


def test_install_swaps_the_auto_protocol_with_the_timeout(monkeypatch):
    monkeypatch.setattr(auto, "AutoHTTPProtocol", H11Protocol)
    install(2.5)
    assert issubclass(auto.AutoHTTPProtocol, HeaderDeadlineProtocol)
    assert auto.AutoHTTPProtocol.timeout_s == 2.5
    install(3)  # again (the module imported twice): replaced, not stacked
    assert auto.AutoHTTPProtocol.timeout_s == 3
    assert auto.AutoHTTPProtocol.__mro__[2] is H11Protocol


# BentoML 1.4.39's IORootModel.model_validate_json; another version needs the hook reviewed.
ROOT_VALIDATE_SHA256 = "5b7105dc94c8d3671e1cc16c38ae1bc8c513236462fe59966f9adce8f7a80d30"


def test_bentoml_root_body_validation_is_the_version_the_hook_copies():
    # From the module's file: install() (other tests) replaces the class's method.
    module = ast.parse(inspect.getsource(io_models))
    (root,) = (n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "IORootModel")
    (method,) = (n for n in root.body if getattr(n, "name", "") == "model_validate_json")
    source = ast.get_source_segment(inspect.getsource(io_models), method)
    assert hashlib.sha256(source.encode()).hexdigest() == ROOT_VALIDATE_SHA256, source


@pytest.mark.parametrize(
    ("typ", "body", "value"),
    [
        (list[dict[str, str]], b'[{"text": "a cat"}]', [{"text": "a cat"}]),
        (str, b'"quoted" is kept', '"quoted" is kept'),
    ],
)
def test_root_bodies_parse_as_bentoml_parses_them_without_a_schema_per_request(
    monkeypatch, typ, body, value
):
    """Same value as BentoML's own parse, and the body type's JSON schema built once per
    API, not once per request (what the profile found)."""
    model = ensure_io_descriptor(typ)
    upstream = model.model_validate_json(body)  # BentoML's own, before the hook
    monkeypatch.setattr(auto, "AutoHTTPProtocol", H11Protocol)
    monkeypatch.setattr(IORootModel, "model_validate_json", IORootModel.model_validate_json)
    install(10)
    built = []
    schema = TypeAdapter.json_schema
    monkeypatch.setattr(
        TypeAdapter, "json_schema", lambda *a, **k: built.append(1) or schema(*a, **k)
    )
    parsed = [model.model_validate_json(body) for _ in range(5)]
    assert all(p.root == upstream.root for p in parsed)
    assert upstream.root == value
    assert len(built) <= 1
