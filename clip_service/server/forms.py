"""What each route takes as its body (:func:`takes`, declared with the route), and the
rewriting of other bodies into it (:func:`prepare`, run by the request reader).

A browser or ``curl -F`` sends images as multipart file fields; the routes are declared with
JSON bodies (so Swagger shows their schemas). A form is rewritten into the route's JSON
body, so every form goes through the same validation as JSON:

* ``items`` routes (``/encode``): each field, in order, is an item; a file is an
  ``img_blob``, a text is a ``text``;
* ``rank``: repeated ``queries`` and ``candidates`` fields, items as above;
* ``image`` routes: the ``image`` field (a file, or a text holding a URL) becomes the image
  item; repeated ``labels`` fields form a list; other fields are passed as they are;
* ``raw`` routes (``/vectorize``, ``/extract_text``): the one file field becomes the body;
* ``file`` routes (``/tag``, ``/wearable``, whose ``file`` parameter BentoML writes to a
  temporary file named after the upload): the ``file`` field is checked and sent on alone,
  under a fixed file name, so a caller's file name (5,000 characters, slashes, NUL) never
  reaches the file system, and a text there is refused instead of being fetched as a URL;
* ``json`` routes (``/v1/embeddings``, OpenAI's JSON API): forms are refused with 415.

BentoML reads a body of any type but the form types as JSON; on the JSON routes a body
under another type (``text/plain``, ``image/png``) is checked here, so that one that is
not JSON is a 400, not BentoML's 500 (for the JSON types, see the request reader).

Form errors name the field at fault; a form the parser cannot read is a 400 with the
parser's own reason (a part header over python-multipart's 4 KiB, a missing boundary).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

from python_multipart.multipart import DEFAULT_MAX_HEADER_SIZE
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message, Receive, Scope

from clip_service.errors import InvalidInput, UnsupportedMediaType

F = TypeVar("F", bound=Callable[..., Any])

BodyKind = Literal["items", "rank", "image", "raw", "file", "json"]
LIST_FIELDS = frozenset({"labels"})
FORM_TYPES = (b"multipart/form-data", b"application/x-www-form-urlencoded")
FILE_FIELD = "file"
EMPTY_NAME = "a form field has an empty name; name every field"
# The parser's reasons, where its own words do not say what to change.
_REASONS = {
    "Maximum header size exceeded": (
        f"a part's header (its field or file name) is over {DEFAULT_MAX_HEADER_SIZE} bytes"
    ),
}


def takes(kind: BodyKind) -> Callable[[F], F]:
    """Declare what a route's body is (see the module docstring): ``@takes("image")``."""

    def declare(route: F) -> F:
        route.__clip_body__ = kind  # type: ignore[attr-defined]
        return route

    return declare


def declared_bodies(apis: Iterable[Any]) -> dict[str, BodyKind]:
    """Route path -> body kind, from the routes' declarations (BentoML's API methods)."""
    return {api.route: api.func.__clip_body__ for api in apis if hasattr(api.func, "__clip_body__")}


async def prepare(kind: BodyKind, scope: Scope, body: bytes) -> tuple[Scope, bytes]:
    """The scope and body the route expects, from what the client sent; raises
    :class:`InvalidInput` (400/415) naming the field at fault."""
    media = content_type(scope)
    if kind == "raw" and media != b"multipart/form-data":
        if not body:
            raise InvalidInput("body", "empty body; send the image bytes")
        return _with_body(scope, body, b"application/octet-stream"), body
    if media == b"multipart/form-data" and kind != "json":
        fields = await _read_form(scope, _replay(body))
        new_body, media_type = await _convert(kind, fields)
        return _with_body(scope, new_body, media_type), new_body
    if kind == "json" and media in FORM_TYPES:
        raise UnsupportedMediaType("body", "forms are not accepted here; send a JSON body")
    if kind == "file":
        raise InvalidInput(FILE_FIELD, _FILE_REQUIRED)
    if media and media not in FORM_TYPES and not media.endswith(b"json"):
        _check_json(body)  # read as JSON by BentoML (see the module docstring)
    return scope, body


def content_type(scope: Scope, default: bytes = b"") -> bytes:
    return dict(scope["headers"]).get(b"content-type", default).split(b";")[0].strip()


def _with_body(scope: Scope, body: bytes, media_type: bytes) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
    headers += [(b"content-type", media_type), (b"content-length", b"%d" % len(body))]
    return {**scope, "headers": headers}


def _replay(body: bytes) -> Receive:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _check_json(body: bytes) -> None:
    try:
        json.loads(body)
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for non-UTF bytes
        raise InvalidInput("body", f"invalid JSON ({exc})") from None
    except RecursionError:
        raise InvalidInput("body", "invalid JSON (nested too deeply)") from None


async def read_form(request: Request, **limits: int) -> FormData:
    """The request's form; unreadable ones are a 400 that says why (starlette's message is
    "Invalid multipart data." for every parser error: the parser's own reason is used)."""
    try:
        return await request.form(**limits)
    except Exception as exc:  # starlette raises several types for malformed forms
        raise InvalidInput("body", f"unreadable multipart form ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    """Starlette raises HTTPException while handling its MultiPartException, which is
    "Invalid multipart data." raised from the parser's own error, when there is one."""
    if isinstance(exc, HTTPException) and isinstance(exc.__context__, MultiPartException):
        exc = exc.__context__
    if exc.__cause__ is not None:
        exc = exc.__cause__
    reason = str(exc) or type(exc).__name__
    return _REASONS.get(reason, reason)


async def _read_form(scope: Scope, receive: Receive) -> list[tuple[str, Any]]:
    form = await read_form(Request(scope, receive))
    fields = [(name, await _value(value)) for name, value in form.multi_items()]
    if not fields:
        raise InvalidInput("body", "the form has no fields")
    if not all(name for name, _ in fields):
        raise InvalidInput("body", EMPTY_NAME)
    return fields


async def _value(value: UploadFile | str) -> bytes | str:
    return await value.read() if isinstance(value, UploadFile) else value


_FILE_REQUIRED = f"a multipart/form-data file field named {FILE_FIELD!r} is required"


async def _convert(kind: BodyKind, fields: list[tuple[str, bytes | str]]) -> tuple[bytes, bytes]:
    if kind == "raw":
        return _one_file(fields), b"application/octet-stream"
    if kind == "file":
        return _file_form(fields)
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


def _one_file(fields: list[tuple[str, bytes | str]]) -> bytes:
    """The one file of a raw route's form; errors name the field at fault."""
    files = [(name, value) for name, value in fields if isinstance(value, bytes)]
    if len(files) > 1:
        raise InvalidInput(files[1][0], "send exactly one file field (or the raw image bytes)")
    if not files:
        raise InvalidInput(fields[0][0] or "body", "expected an image file, got a text field")
    return files[0][1]


def _file_form(fields: list[tuple[str, bytes | str]]) -> tuple[bytes, bytes]:
    """A form of the ``file`` field alone, under a fixed file name; other fields are
    ignored, as BentoML ignores them."""
    values = [value for name, value in fields if name == FILE_FIELD]
    if not values:
        raise InvalidInput(FILE_FIELD, _FILE_REQUIRED)
    if len(values) > 1:
        raise InvalidInput(FILE_FIELD, "send one file, not several")
    if not isinstance(values[0], bytes):
        raise InvalidInput(FILE_FIELD, "expected an image file, got a text field")
    data = values[0]
    boundary = uuid.uuid4().hex
    while boundary.encode() in data:  # never in practice; a boundary must not occur
        boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{FILE_FIELD}"; '
        'filename="upload"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}".encode()


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
