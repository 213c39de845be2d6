"""Request ids: the caller's, echoed back, or a fresh UUID; carried by every log line.

:func:`bound` gives each HTTP request of the entry service an id (a valid
``request_id`` / ``X-Request-ID`` header, else a UUID) and keeps it in a context variable
for the log lines written while handling the request (:mod:`.logs`); the response shaper
echoes it as ``X-Request-ID``. It also goes into OpenTelemetry baggage, which BentoML's
client sends to the model services as the W3C ``baggage`` header.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from opentelemetry import baggage
from opentelemetry import context as otel_context
from starlette.datastructures import Headers

from clip_service.errors import InvalidInput

logger = logging.getLogger(__name__)

HEADERS = ("request_id", "x-request-id")
BAGGAGE_KEY = "request_id"
NO_REQUEST = "-"
_VALID = re.compile(r"^[\x21-\x7e]{1,128}$")

current_request_id: ContextVar[str] = ContextVar("request_id", default=NO_REQUEST)


def request_id(headers: Mapping[str, str]) -> str:
    """The ``request_id`` (or ``X-Request-ID``) header, else the request's generated id.

    Raises :class:`InvalidInput` for a header that is not 1 to 128 visible ASCII
    characters (routes that echo the id in their body refuse it).
    """
    for name in HEADERS:
        if (given := headers.get(name)) is not None:
            if not _VALID.match(given):
                raise InvalidInput(f"{name} header", "must be 1 to 128 visible ASCII characters")
            return given
    rid = current_request_id.get()
    if rid == NO_REQUEST:
        rid = str(uuid.uuid4())
    logger.info("request_id %s assigned", rid)
    return rid


def current() -> str:
    """The id of the request being handled: ours, or one a caller sent as baggage."""
    rid = current_request_id.get()
    if rid == NO_REQUEST:
        return str(baggage.get_baggage(BAGGAGE_KEY) or NO_REQUEST)
    return rid


def echo_headers(rid: str) -> dict[str, str]:
    return {name: rid for name in HEADERS}


def _given(headers: Headers) -> str | None:
    for name in HEADERS:
        if (given := headers.get(name)) is not None and _VALID.match(given):
            return given
    return None


@contextmanager
def bound(headers: Headers) -> Iterator[str]:
    """The request's id (a valid given one, else a new UUID), in context and baggage while
    the request is handled. An invalid header is replaced here (routes that echo the id
    refuse it with a 400 through :func:`request_id`)."""
    rid = _given(headers) or str(uuid.uuid4())
    token = current_request_id.set(rid)
    otel_token = otel_context.attach(baggage.set_baggage(BAGGAGE_KEY, rid))
    try:
        yield rid
    finally:
        otel_context.detach(otel_token)
        current_request_id.reset(token)
