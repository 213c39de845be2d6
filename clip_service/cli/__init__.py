"""The clip-service command line."""

from clip_service.cli.main import main

__all__ = ["main"]
