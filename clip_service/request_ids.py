"""Request ids: the caller's, echoed back, or a fresh UUID that is logged."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping

from .errors import InvalidInput

logger = logging.getLogger(__name__)

HEADERS = ("request_id", "x-request-id")
_VALID = re.compile(r"^[\x21-\x7e]{1,128}$")


def request_id(headers: Mapping[str, str]) -> str:
    """The ``request_id`` (or ``X-Request-ID``) header, else a new UUID."""
    for name in HEADERS:
        if (given := headers.get(name)) is not None:
            if not _VALID.match(given):
                raise InvalidInput(f"{name} header", "must be 1 to 128 visible ASCII characters")
            return given
    generated = str(uuid.uuid4())
    logger.info("request_id %s assigned", generated)
    return generated


def echo_headers(rid: str) -> dict[str, str]:
    return {name: rid for name in HEADERS}
