from __future__ import annotations

import logging
import sys

from clip_service.errors import InvalidInput
from clip_service.process.logs import DropClientErrors


def _record(error: BaseException) -> logging.LogRecord:
    try:
        raise error
    except type(error):
        exc_info = sys.exc_info()
    return logging.LogRecord("x", logging.ERROR, __file__, 1, "Exception on /", (), exc_info)


def test_client_errors_are_dropped_and_server_errors_kept():
    keep = DropClientErrors().filter
    assert not keep(_record(InvalidInput("body", "bad")))
    assert keep(_record(RuntimeError("boom")))
    assert keep(logging.LogRecord("x", logging.INFO, __file__, 1, "plain", (), None))
