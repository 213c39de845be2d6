"""The package's own log lines (label caches, request ids) in the server's log."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s [%(levelname)s] [%(name)s] %(message)s"


def configure(level: int = logging.INFO) -> None:
    """Send ``clip_service`` records to stderr; BentoML configures only its own loggers."""
    logger = logging.getLogger("clip_service")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%dT%H:%M:%S%z"))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
