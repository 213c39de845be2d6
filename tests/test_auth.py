"""API keys without servers: the access control middleware, the settings that feed it, the
start-up warning."""

from __future__ import annotations

import logging

import click
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from clip_service.server import auth
from clip_service.server.auth import ApiKeys, warn_if_open
from clip_service.server.middleware import AccessControl
from clip_service.settings import Settings

KEYS = ("key-one", "key-two", "key-three")


def ok(request) -> PlainTextResponse:
    return PlainTextResponse("ok")


APP = Starlette(
    routes=[
        Route(path, ok, methods=["GET", "POST"])
        for path in ("/encode", "/livez", "/readyz", "/healthz", "/metrics", "/", "/docs.json")
    ]
    + [Route("/static_content/x.css", ok), Mount("/ui", routes=[Route("/app.js", ok)])]
)


def client(public_metrics: bool = False, public_docs: bool = False) -> TestClient:
    keys = ApiKeys(KEYS, public_metrics=public_metrics, public_docs=public_docs)
    return TestClient(AccessControl(APP, origins=(), keys=keys, expose=()))


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer key-two"},
        {"authorization": "bearer key-three"},
        {"x-api-key": "key-one"},
        {"authorization": "Bearer wrong", "x-api-key": "key-one"},
        {"authorization": "Basic d2VhdmlhdGU6a2V5LW9uZQ=="},  # a key as Basic password
    ],
)
def test_a_configured_key_in_either_header_gets_in(headers):
    assert client().post("/encode", headers=headers).text == "ok"


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({}, "an API key is required; send it as 'Authorization: Bearer <key>'"),
        ({"authorization": "Basic a2V5LW9uZQ=="}, "an API key is required"),  # no password
        ({"authorization": "Basic !!"}, "an API key is required"),
        ({"authorization": "Basic a2V5LW9uZTp3cm9uZw=="}, "the API key is not valid"),
        ({"authorization": "Bearer "}, "an API key is required"),
        ({"authorization": "Bearer key-on"}, "the API key is not valid"),
        ({"x-api-key": "key-one-and-more"}, "the API key is not valid"),
    ],
)
def test_no_key_or_a_wrong_one_is_a_401_in_the_error_shape(headers, problem):
    response = client().post("/encode", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"].startswith(f"authorization: {problem}")
    assert list(response.json()) == ["error"]


def test_what_stays_open():
    plain = client()
    for path in ("/livez", "/readyz", "/healthz", "/ui/app.js"):
        assert plain.get(path).status_code == 200, path
    assert plain.post("/ui/app.js").status_code == 401  # only the page's files are open
    for path in ("/metrics", "/", "/docs.json", "/static_content/x.css", "/uix"):
        assert plain.get(path).status_code == 401, path
    opened = client(public_metrics=True, public_docs=True)
    for path in ("/metrics", "/", "/docs.json", "/static_content/x.css"):
        assert opened.get(path).status_code == 200, path
    assert opened.get("/encode").status_code == 401
    assert client(public_docs=True).get("/metrics").status_code == 401
    assert client(public_metrics=True).get("/docs.json").status_code == 401


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch):
    calls = []

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    keys = ApiKeys(KEYS, public_metrics=False, public_docs=False)
    for given, accepted in [(["key-one"], True), (["nope"], False), (["nope", "key-two"], True)]:
        calls.clear()
        assert keys.accepts(given) is accepted
        # Every given key against every configured key, no early exit on the first match,
        # and always fixed-length digests (compare_digest leaks lengths otherwise).
        assert len(calls) == len(given) * len(KEYS)
        assert {len(a) for a, _ in calls} == {len(b) for _, b in calls} == {32}


def test_keys_come_from_the_setting_and_the_file(tmp_path, monkeypatch):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# rotated monthly\n\n  file-key-1  \nfile-key-2\n")
    monkeypatch.setenv("API_KEYS", " env-key-1, env-key-2 ,")
    monkeypatch.setenv("API_KEYS_FILE", str(keys_file))
    assert Settings().api_key_list == ("env-key-1", "env-key-2", "file-key-1", "file-key-2")
    monkeypatch.delenv("API_KEYS")
    assert Settings().api_key_list == ("file-key-1", "file-key-2")
    monkeypatch.delenv("API_KEYS_FILE")
    assert Settings().api_key_list == ()


@pytest.mark.parametrize(
    ("env", "content", "message"),
    [
        ({"API_KEYS_FILE": "{missing}"}, None, "api_keys_file: cannot read it"),
        ({"API_KEYS_FILE": "{file}"}, "# only a comment\n\n", "api_keys_file: no key in"),
        ({"API_KEYS_FILE": "{file}"}, "two words\n", "a key must be visible ASCII"),
        ({"API_KEYS": "fine,caf\u00e9"}, None, "a key must be visible ASCII"),
    ],
)
def test_unusable_keys_stop_the_start(tmp_path, monkeypatch, env, content, message):
    keys_file = tmp_path / "keys"
    if content is not None:
        keys_file.write_text(content)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(file=keys_file, missing=tmp_path / "missing"))
    with pytest.raises(ValidationError, match=message):
        Settings()


@pytest.mark.parametrize(
    ("host", "has_keys", "warned"),
    [
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("192.168.1.10", False, True),
        ("my-host.example", False, True),
        ("0.0.0.0", True, False),
        ("127.0.0.1", False, False),
        ("::1", False, False),
        ("localhost", False, False),
    ],
)
def test_start_up_warning_when_open_to_the_network(caplog, host, has_keys, warned):
    command = click.Command("serve", params=[click.Option(["--host"])])
    with caplog.at_level(logging.WARNING), click.Context(command) as context:
        context.params["host"] = host
        warn_if_open(has_keys)
    assert any("WARNING: no API keys set" in r.getMessage() for r in caplog.records) is warned


def test_no_warning_outside_bentoml_serve(caplog):
    with caplog.at_level(logging.WARNING):
        warn_if_open(False)  # no click command running: a worker, a test, a script
        with click.Context(click.Command("worker", params=[click.Option(["--fd"])])):
            warn_if_open(False)
    assert not caplog.records


def test_without_host_option_bentoml_binds_its_default(caplog):
    command = click.Command("serve", params=[click.Option(["--host"])])
    with caplog.at_level(logging.WARNING), click.Context(command) as context:
        context.params["host"] = None
        warn_if_open(False)
    assert "binds 0.0.0.0" in caplog.text
