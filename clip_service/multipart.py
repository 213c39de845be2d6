"""Multipart forms on every image route, as one ASGI middleware.

A browser or ``curl -F`` sends images as multipart file fields; the routes are declared with
JSON bodies (so Swagger shows their schemas). The middleware rewrites a form into the
route's JSON body, so every form goes through the same validation as JSON:

* ``items`` routes (``/encode``): each field, in order, is an item; a file is an
  ``img_blob``, a text is a ``text``;
* ``rank``: repeated ``queries`` and ``candidates`` fields, items as above;
* ``image`` routes: the ``image`` field (a file, or a text holding a URL) becomes the image
  item; repeated ``labels`` fields form a list; other fields are passed as they are;
* ``raw`` routes (``/vectorize``, ``/extract_text``): the one file field becomes the body.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, Literal

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import InvalidInput, error_body
from .middleware import content_type, send_json

FormKind = Literal["items", "rank", "image", "raw"]
LIST_FIELDS = frozenset({"labels"})


class MultipartForms:
    def __init__(self, app: ASGIApp, routes: Mapping[str, FormKind]) -> None:
        self.app, self.routes = app, dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = self.routes.get(scope.get("path", ""))
        if kind is None or not content_type(scope).startswith(b"multipart/form-data"):
            await self.app(scope, receive, send)
            return
        try:
            fields = await _read_form(scope, receive)
            body, media_type = await _convert(kind, fields)
        except InvalidInput as exc:
            await send_json(send, exc.error_code, error_body(str(exc)))
            return
        headers = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")
        ]
        headers += [(b"content-type", media_type), (b"content-length", b"%d" % len(body))]

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


async def _read_form(scope: Scope, receive: Receive) -> list[tuple[str, Any]]:
    try:
        form = await Request(scope, receive).form()
    except Exception as exc:  # starlette raises several types for malformed forms
        raise InvalidInput("body", f"unreadable multipart form ({exc})") from None
    fields = [(name, await _value(value)) for name, value in form.multi_items()]
    if not fields:
        raise InvalidInput("body", "the form has no fields")
    return fields


async def _value(value: UploadFile | str) -> bytes | str:
    return await value.read() if isinstance(value, UploadFile) else value


async def _convert(kind: FormKind, fields: list[tuple[str, bytes | str]]) -> tuple[bytes, bytes]:
    if kind == "raw":
        files = [value for _, value in fields if isinstance(value, bytes)]
        if len(files) != 1:
            raise InvalidInput("body", "send exactly one file field (or the raw image bytes)")
        return files[0], b"application/octet-stream"
    if kind == "items":
        payload: Any = [_item(value) for _, value in fields]
    elif kind == "rank":
        payload = {"queries": [], "candidates": []}
        for name, value in fields:
            if name not in payload:
                raise InvalidInput(name, "unknown field; use queries and candidates")
            payload[name].append(_item(value))
    else:
        payload = {}
        for name, value in fields:
            if name == "image":
                payload[name] = _image(value)
            elif name in LIST_FIELDS:
                payload.setdefault(name, []).append(_text(name, value))
            else:
                payload[name] = _text(name, value)
    return json.dumps(payload).encode(), b"application/json"


def _item(value: bytes | str) -> dict[str, str]:
    return _blob(value) if isinstance(value, bytes) else {"text": value}


def _image(value: bytes | str) -> dict[str, str]:
    return _blob(value) if isinstance(value, bytes) else {"img_uri": value}


def _blob(data: bytes) -> dict[str, str]:
    return {"img_blob": base64.b64encode(data).decode()}


def _text(name: str, value: bytes | str) -> str:
    if isinstance(value, bytes):
        raise InvalidInput(name, "expected a text field, got a file")
    return value
