"""How a request can fail, as plain exceptions, and the one error shape they are answered in:
``{"error": "<field>: <problem>"}``.

The layers below the server (inputs, models, interrogation) raise these; the server turns
each into its answer (a route's guard, :mod:`clip_service.server.guard`, or a middleware),
so no layer below it needs to know HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

_MAX_REPORTED = 5  # validation errors named in one message
# The field a message starts with: ``input[3]: ...``, ``body[0].text: ...``.
_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")


class RequestError(Exception):
    """Ends a request with ``status``, ``{"error": <message>}`` and ``headers``."""

    status: int = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})


class InvalidInput(RequestError):
    """Bad client input; ``field`` is the JSON path or form field it concerns."""

    status = HTTPStatus.BAD_REQUEST

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}" if field else problem)


class PayloadTooLarge(InvalidInput):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedMediaType(InvalidInput):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class NotFound(RequestError):
    """What the request names (a job, a label table) does not exist."""

    status = HTTPStatus.NOT_FOUND


class Unavailable(RequestError):
    """Temporarily unable to serve (busy, or still preparing): retry after ``retry_after_s``."""

    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, message: str, retry_after_s: float) -> None:
        self.retry_after_s = max(1, int(retry_after_s))
        super().__init__(message, {"Retry-After": str(self.retry_after_s)})


class NotServed(RequestError):
    """This deployment does not serve the route (e.g. ``CAPTION_MODEL=none``)."""

    status = HTTPStatus.NOT_IMPLEMENTED


def error_body(message: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, **extra}


def openai_error_body(message: str, status: int) -> dict[str, Any]:
    """The same error in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``:
    OpenAI's clients show ``message`` only when it is there (else just "Error code: 400"),
    and expose ``param`` and ``code``."""
    field = _FIELD.match(message)
    if status == HTTPStatus.UNAUTHORIZED:
        kind, code = "invalid_request_error", "invalid_api_key"
    elif status == HTTPStatus.TOO_MANY_REQUESTS:
        kind, code = "requests", "rate_limit_exceeded"
    elif status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        kind, code = "server_error", None
    else:
        kind, code = "invalid_request_error", None
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": field.group(1) if field else None,
            "code": code,
        }
    }


def normalize_error_body(body: Any) -> dict[str, Any]:
    """Rewrite BentoML's 4xx bodies into the one shape.

    BentoML answers an ``InvalidArgument`` with ``[{"error": ...}]`` and a pydantic
    failure with ``{"error": "1 validation error for ...", "detail": [...]}``, whose message
    names no field; the validation errors, each naming its field, become the message.
    FastAPI answers ``{"detail": "Not Found"}``.
    """
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], Mapping):
        body = body[0]
    if isinstance(body, Mapping) and "error" not in body and isinstance(body.get("detail"), str):
        return error_body(body["detail"])  # FastAPI's and Starlette's own errors
    if not isinstance(body, Mapping) or "error" not in body:
        return error_body(str(body))
    details = body.get("detail")
    if isinstance(details, list) and details and isinstance(details[0], Mapping):
        return error_body(validation_message(details))
    return dict(body)


def validation_message(details: list[Mapping[str, Any]]) -> str:
    """Pydantic's validation errors as one message, each naming its field."""
    messages = [_format_validation_error(d) for d in details[:_MAX_REPORTED]]
    if len(details) > _MAX_REPORTED:
        messages.append(f"and {len(details) - _MAX_REPORTED} more")
    return "; ".join(messages)


def _format_validation_error(detail: Mapping[str, Any]) -> str:
    field = _format_loc(detail.get("loc", ()))
    message = str(detail.get("msg", "invalid value"))
    return f"{field}: {message}" if field else message


def _format_loc(loc: Iterable[Any]) -> str:
    """``("queries", 0, "text")`` -> ``queries[0].text``; a root body is called ``body``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]" if path else f"body[{part}]"
        elif part not in ("root", "__root__"):
            path += f".{part}" if path else str(part)
    return path or "body"
