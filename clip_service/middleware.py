"""ASGI middlewares of the entry service: the request body guard and the one error shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping

import anyio.to_thread
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body, normalize_error_body
from .json_depth import exceeds_depth

Headers = list[tuple[bytes, bytes]]
# Bodies up to this size are scanned for nesting on the event loop, larger ones in a thread.
_SCAN_INLINE_BYTES = 1 << 16


class BodyGuard:
    """Read the body once, enforcing ``max_bytes`` (413), and make body errors 4xx.

    * The body must arrive within ``read_timeout_s`` (a client that declares a body and
      stalls or trickles it gets 408 and its connection closed).
    * A JSON body nested deeper than ``max_json_depth`` is refused (400) before anything
      parses it: Python's parser recurses once per level, and unguarded a deep body is
      never answered and keeps the server from stopping (:mod:`.json_depth`).
    * Routes in ``raw_body_routes`` take the body as bytes whatever the client's
      ``Content-Type`` (curl's default form type included): it is set to octet-stream
      (multipart forms are left to :mod:`.multipart`), and an empty body is refused here
      (BentoML would hand the route a JSON default).
    * BentoML answers a body that is not valid JSON, or a form without the route's file
      field (``file_fields``: route -> field), with a 500; only then (no cost on the good
      path) the guard looks for those problems and answers 400 naming them.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        raw_body_routes: Iterable[str],
        file_fields: Mapping[str, str],
        read_timeout_s: float,
        max_json_depth: int,
    ) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.read_timeout_s, self.max_json_depth = read_timeout_s, max_json_depth
        self.raw_body_routes = frozenset(raw_body_routes)
        self.file_fields = dict(file_fields)

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
        if await self._too_deep(scope, body):
            message = f"body: JSON nested deeper than {self.max_json_depth} levels"
            await send_json(send, 400, error_body(message))
            return
        if scope["path"] in self.raw_body_routes:
            if not body:
                await send_json(send, 400, error_body("body: empty body; send the image bytes"))
                return
            if not content_type(scope).startswith(b"multipart/form-data"):
                scope = {**scope, "headers": _with_octet_stream(scope["headers"])}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        problem = None

        async def checking_send(message: Message) -> None:
            nonlocal problem
            if message["type"] == "http.response.start" and message["status"] == 500:
                problem = await self._client_error(scope, body)
                if problem:
                    await send_json(send, 400, error_body(problem))
                    return
            if problem is None:
                await send(message)

        await self.app(scope, replay, checking_send)

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

    async def _too_deep(self, scope: Scope, body: bytes) -> bool:
        """Whether a body that will be parsed as JSON nests too deeply (large bodies are
        scanned off the event loop)."""
        if scope["path"] in self.raw_body_routes or content_type(scope).startswith(
            b"multipart/form-data"
        ):
            return False
        if len(body) <= _SCAN_INLINE_BYTES:
            return exceeds_depth(body, self.max_json_depth)
        return await anyio.to_thread.run_sync(exceeds_depth, body, self.max_json_depth)

    async def _client_error(self, scope: Scope, body: bytes) -> str | None:
        """What the client got wrong, if that is why the app failed."""
        if json_error := _json_error(scope, body):
            return f"body: invalid JSON ({json_error})"
        field = self.file_fields.get(scope["path"])
        if field and not await _has_file_field(scope, body, field):
            return f"{field}: a multipart/form-data file field named {field!r} is required"
        return None


async def _has_file_field(scope: Scope, body: bytes, field: str) -> bool:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, receive).form()
    except Exception:  # any unparsable form lacks the field
        return False
    return isinstance(form.get(field), UploadFile)


def _with_octet_stream(headers: Headers) -> Headers:
    kept = [(k, v) for k, v in headers if k.lower() != b"content-type"]
    return [*kept, (b"content-type", b"application/octet-stream")]


def content_type(scope: Scope, default: bytes = b"") -> bytes:
    return dict(scope["headers"]).get(b"content-type", default).split(b";")[0].strip()


def _json_error(scope: Scope, body: bytes) -> str | None:
    if not content_type(scope, b"application/json").endswith(b"json"):
        return None
    try:
        json.loads(body)
    except ValueError as exc:
        return str(exc)
    return None


class ResponseRewrite:
    """Base of the middlewares that buffer the responses of some statuses and send them
    rewritten (one body-buffering loop for all of them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def wants(self, status: int) -> bool:
        raise NotImplementedError

    async def rewrite(self, send: Send, start: Message, body: bytes) -> None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def buffering_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and self.wants(message["status"]):
                start = message
            elif start is None or message["type"] != "http.response.body":
                await send(message)
            else:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self.rewrite(send, start, b"".join(chunks))

        await self.app(scope, receive, buffering_send)


class ErrorShape(ResponseRewrite):
    """Rewrite every 4xx JSON response into ``{"error": "<field>: <problem>", ...}``."""

    def wants(self, status: int) -> bool:
        return 400 <= status < 500

    async def rewrite(self, send: Send, start: Message, body: bytes) -> None:
        await send_json(send, start["status"], _rewrite(body), start["headers"])


def _rewrite(raw: bytes) -> dict:
    try:
        body = json.loads(raw) if raw else ""
    except ValueError:
        body = raw.decode("utf-8", "replace").strip()
    return normalize_error_body(body)


async def send_json(send: Send, status: int, body: dict, headers: Headers = ()) -> None:
    """Send a JSON response, keeping ``headers`` other than the content ones."""
    payload = json.dumps(body).encode()
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
    kept += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": kept})
    await send({"type": "http.response.body", "body": payload})
