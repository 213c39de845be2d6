"""The package's own log lines (label caches, request ids) in the server's log, each with
the id of the request it was written for (``-`` outside requests)."""

from __future__ import annotations

import json
import logging
import sys

from bentoml.exceptions import InvalidArgument as BentoInvalidArgument
from pydantic import ValidationError

from clip_service.errors import InvalidInput
from clip_service.process import request_ids

_FORMAT = "%(asctime)s [%(levelname)s] [%(name)s] [request_id=%(request_id)s] %(message)s"


class DropClientErrors(logging.Filter):
    """BentoML logs every 4xx it raises at ERROR with a traceback, and a body that is not JSON
    as a 500 (answered 400 by the request reader); the access log already records the
    status, so bad client input does not flood the error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        client = InvalidInput | ValidationError | BentoInvalidArgument | json.JSONDecodeError
        return not isinstance(error, client)


class RequestIdFilter(logging.Filter):
    """Stamp each record with the current request's id (:mod:`.request_ids`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_ids.current()
        return True


def configure(level: int = logging.INFO) -> None:
    """Send ``clip_service`` records to stderr (BentoML configures only its own loggers),
    and keep client errors out of BentoML's error log."""
    logging.getLogger("bentoml._internal.server.http_app").addFilter(DropClientErrors())
    logger = logging.getLogger("clip_service")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%dT%H:%M:%S%z"))
        handler.addFilter(RequestIdFilter())
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
