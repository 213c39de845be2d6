"""The one error shape: every 4xx body is ``{"error": "<field>: <problem>", ...}``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException

_MAX_REPORTED = 5  # validation errors named in one message


class InvalidInput(BentoMLException):
    """Bad client input; ``field`` is the JSON path or form field it concerns."""

    error_code = HTTPStatus.BAD_REQUEST

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}" if field else problem)


class PayloadTooLarge(InvalidInput):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedMediaType(InvalidInput):
    error_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


def error_body(message: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, **extra}


def normalize_error_body(body: Any) -> dict[str, Any]:
    """Rewrite BentoML's 4xx bodies into the one shape.

    BentoML answers an ``InvalidArgument`` with ``[{"error": ...}]`` and a pydantic
    failure with ``{"error": "1 validation error for ...", "detail": [...]}``, whose message
    names no field; the validation errors, each naming its field, become the message.
    """
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], Mapping):
        body = body[0]
    if not isinstance(body, Mapping) or "error" not in body:
        return error_body(str(body))
    details = body.get("detail")
    if isinstance(details, list) and details and isinstance(details[0], Mapping):
        messages = [_format_validation_error(d) for d in details[:_MAX_REPORTED]]
        if len(details) > _MAX_REPORTED:
            messages.append(f"and {len(details) - _MAX_REPORTED} more")
        return error_body("; ".join(messages))
    return dict(body)


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
