"""The request-head deadline hooks uvicorn internals: these tests fail when an upgrade of
uvicorn, h11 or BentoML changes what it relies on (tests/test_served_hardening.py checks
its effect over real sockets)."""

from __future__ import annotations

import ast
import inspect
import logging

import _bentoml_impl.worker.service as bentoml_worker
import uvicorn.config
from uvicorn.protocols.http import auto
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from clip_service import connection_deadline
from clip_service.connection_deadline import WRITTEN_FOR, HeaderDeadlineProtocol, install


def test_installed_versions_are_the_ones_it_was_written_for():
    # On an upgrade: re-read uvicorn's h11_impl.py and auto.py and BentoML's worker, check
    # the assumptions below still hold, then update WRITTEN_FOR.
    assert connection_deadline.installed_versions() == WRITTEN_FOR


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
    assert install(2.5)
    assert issubclass(auto.AutoHTTPProtocol, HeaderDeadlineProtocol)
    assert auto.AutoHTTPProtocol.timeout_s == 2.5
    assert install(3)  # again (the module imported twice): replaced, not stacked
    assert auto.AutoHTTPProtocol.timeout_s == 3
    assert auto.AutoHTTPProtocol.__mro__[2] is H11Protocol


def test_install_refuses_other_versions_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(auto, "AutoHTTPProtocol", H11Protocol)
    monkeypatch.setattr(connection_deadline, "installed_versions", lambda: {"uvicorn": "9"})
    with caplog.at_level(logging.WARNING):
        assert not install(2)
    assert auto.AutoHTTPProtocol is H11Protocol
    assert "request-head deadline not installed: written for" in caplog.text


def test_install_leaves_other_protocols_alone(monkeypatch, caplog):
    other = type("HttpToolsProtocol", (), {})  # what "auto" is when httptools is installed
    monkeypatch.setattr(auto, "AutoHTTPProtocol", other)
    with caplog.at_level(logging.WARNING):
        assert not install(2)
    assert auto.AutoHTTPProtocol is other
    assert "not h11" in caplog.text
