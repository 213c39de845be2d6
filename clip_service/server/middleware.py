"""The entry service's three ASGI middlewares, outermost first, each with one job:

* :class:`ResponseShaper`: every answer in the project's shape: the request's id in its log
  lines and its ``X-Request-ID`` header, 4xx bodies as ``{"error": ...}``, 503s with a
  ``Retry-After`` and a message that says what happened; under ``/v1/`` every error in
  OpenAI's shape, which OpenAI's clients read, and on the Stable Diffusion web UI's routes
  with FastAPI's ``detail`` too, which its clients read;
* :class:`AccessControl`: who may call: browsers from the allowed origins (CORS), and,
  with API keys set, only requests that carry one;
* :class:`RequestReader`: the request body, read once within its limits and turned into
  what its route takes (:mod:`.forms`).

Whatever a route itself answers goes through its guard (:mod:`.guard`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clip_service.errors import InvalidInput, error_body, normalize_error_body, openai_error_body
from clip_service.inputs.json_depth import exceeds_depth
from clip_service.process import request_ids
from clip_service.server.auth import ApiKeys
from clip_service.server.forms import BodyKind, content_type, prepare
from clip_service.server.guard import RETRY_AFTER_S

RawHeaders = list[tuple[bytes, bytes]]
# Bodies up to this size are scanned for nesting on the event loop, larger ones in a thread.
_SCAN_INLINE_BYTES = 1 << 16
UNAVAILABLE = (
    "service unavailable: a model service is overloaded, restarting or unreachable; "
    f"retry after {RETRY_AFTER_S} s"
)

# Routes answered in OpenAI's error shape (the OpenAI-compatible API), not the project's.
OPENAI_PREFIX = "/v1/"
# The Stable Diffusion web UI's routes (routes/sd_webui.py): every error also carries its
# message as FastAPI's "detail", which the web UI's clients read.
WEBUI_PREFIXES = ("/interrogator/", "/sdapi/")
# BentoML's own 503 messages: a generic error, and /readyz naming a private method.
_BENTOML_503S = ("An unexpected error", "Service is not ready")


class ResponseShaper:
    """Every answer in the project's shape (see the module docstring). Bodies are buffered
    only for the statuses rewritten: 4xx and 503."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with request_ids.bound(Headers(scope=scope)) as rid:
            start: Message | None = None
            chunks: list[bytes] = []

            openai = scope["path"].startswith(OPENAI_PREFIX)
            webui = scope["path"].startswith(WEBUI_PREFIXES)

            async def shaping_send(message: Message) -> None:
                nonlocal start
                if message["type"] == "http.response.start":
                    message = {**message, "headers": _with_request_id(message, rid)}
                    if _rewritten(message["status"], openai or webui):
                        start = message
                        return
                if start is None or message["type"] != "http.response.body":
                    await send(message)
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await _send_shaped(send, start, b"".join(chunks), openai, webui)

            await self.app(scope, receive, shaping_send)


def _rewritten(status: int, openai: bool) -> bool:
    return 400 <= status < 500 or status == 503 or (openai and status >= 500)


def _with_request_id(start: Message, rid: str) -> RawHeaders:
    headers = list(start.get("headers", []))
    if all(key.lower() != b"x-request-id" for key, _ in headers):
        headers.append((b"x-request-id", rid.encode()))
    return headers


async def _send_shaped(
    send: Send, start: Message, raw: bytes, openai: bool, webui: bool = False
) -> None:
    try:
        body = json.loads(raw) if raw else ""
    except ValueError:
        body = raw.decode("utf-8", "replace").strip()
    shaped = normalize_error_body(body)
    headers = list(start["headers"])
    if start["status"] == 503:
        if not any(key.lower() == b"retry-after" for key, _ in headers):
            headers.append((b"retry-after", b"%d" % RETRY_AFTER_S))
        message = str(shaped.get("error", ""))
        if not message or message.startswith(_BENTOML_503S):  # says nothing a client can use
            shaped = error_body(UNAVAILABLE)
    if openai:
        shaped = openai_error_body(str(shaped.get("error", "")), start["status"])
    if webui:
        shaped = {**shaped, "detail": shaped.get("error", "")}
    await send_json(send, start["status"], shaped, headers)


class AccessControl:
    """Who may call: CORS for browsers from ``origins`` (preflights answered here, and every
    answer, refusals included, carries the headers), then, when ``keys`` are configured,
    401 with ``WWW-Authenticate`` for requests without a valid one."""

    def __init__(
        self, app: ASGIApp, origins: Sequence[str], keys: ApiKeys | None, expose: Sequence[str]
    ) -> None:
        self.keys = keys
        self.inner = app
        checked: ASGIApp = self._check_key if keys is not None else app
        if origins:
            checked = CORSMiddleware(
                checked,
                allow_origins=list(origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["*"],
                expose_headers=list(expose),
            )
        self.app = checked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    async def _check_key(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.keys is not None
        refusal = None
        if scope["type"] == "http":
            refusal = self.keys.refusal(scope["method"], scope["path"], Headers(scope=scope))
        if refusal is None:
            await self.inner(scope, receive, send)
            return
        await send_json(send, 401, error_body(refusal), [(b"www-authenticate", b"Bearer")])


class RequestReader:
    """The body of every POST, read once:

    * within ``read_timeout_s`` (a client that declares a body and stalls or trickles it
      gets 408 and its connection closed) and ``max_bytes`` (413);
    * a body that will be parsed as JSON, refused (400) when nested deeper than
      ``max_json_depth``, before anything parses it: Python's parser recurses once per
      level, and a deep body was never answered and kept the server from stopping;
    * turned into what its route takes (``bodies``: route -> kind, declared with the route:
      raw image bytes, a form rewritten into the route's JSON; :mod:`.forms`);
    * a 500 from the app for a JSON body that is not valid JSON (BentoML's answer) becomes
      the 400 it is; looked for only then, at no cost on the good path.
    """

    def __init__(
        self,
        app: ASGIApp,
        bodies: Mapping[str, BodyKind],
        max_bytes: int,
        read_timeout_s: float,
        max_json_depth: int,
    ) -> None:
        self.app, self.bodies = app, dict(bodies)
        self.max_bytes, self.read_timeout_s = max_bytes, read_timeout_s
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.read_timeout_s):
                body = await self._read_body(scope, receive)
        except TimeoutError:
            message = f"body: not received within {self.read_timeout_s:g} s"
            await send_json(send, 408, error_body(message), [(b"connection", b"close")])
            return
        if body is None:
            await send_json(send, 413, error_body(f"body: larger than {self.max_bytes} bytes"))
            return
        kind = self.bodies.get(scope["path"])
        try:
            await self._check_depth(scope, kind, body)
            if kind is not None:
                scope, body = await prepare(kind, scope, body)
        except InvalidInput as exc:
            await send_json(send, exc.status, error_body(str(exc)))
            return
        await self.app(scope, _replay(body, receive), _answering_bad_json(scope, body, send))

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _check_depth(self, scope: Scope, kind: BodyKind | None, body: bytes) -> None:
        """Refuse a body that will be parsed as JSON and nests too deeply (large bodies are
        scanned off the event loop)."""
        if kind in ("raw", "file") or content_type(scope).startswith(b"multipart/form-data"):
            return
        if len(body) <= _SCAN_INLINE_BYTES:
            deep = exceeds_depth(body, self.max_json_depth)
        else:
            deep = await anyio.to_thread.run_sync(exceeds_depth, body, self.max_json_depth)
        if deep:
            raise InvalidInput("body", f"JSON nested deeper than {self.max_json_depth} levels")


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the connection's own messages (a disconnect, say)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _answering_bad_json(scope: Scope, body: bytes, send: Send) -> Send:
    """``send``, but a 500 for a body that is not valid JSON is answered 400 instead."""
    replaced = False

    async def checking_send(message: Message) -> None:
        nonlocal replaced
        start = message["type"] == "http.response.start"
        if start and message["status"] == 500 and (problem := _json_error(scope, body)):
            replaced = True
            await send_json(send, 400, error_body(f"body: invalid JSON ({problem})"))
            return
        if not replaced:
            await send(message)

    return checking_send


def _json_error(scope: Scope, body: bytes) -> str | None:
    if not content_type(scope, b"application/json").endswith(b"json"):
        return None
    try:
        json.loads(body)
    except ValueError as exc:
        return str(exc)
    except RecursionError:
        return "nested too deeply"
    return None


async def send_json(send: Send, status: int, body: dict, headers: RawHeaders = ()) -> None:
    """Send a JSON response, keeping ``headers`` other than the content ones."""
    payload = json.dumps(body).encode()
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
    kept += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": kept})
    await send({"type": "http.response.body", "body": payload})
