"""Per-request cost limits that depend on more than one field (docs/api.md, "Limits").

Single fields are bounded where they are declared (pydantic ``Field`` limits on the route
parameters); these checks combine fields, and run in the routes before any model work.
"""

from __future__ import annotations

from collections.abc import Sequence

from clip_service.errors import InvalidInput
from clip_service.server.schemas import ImageItem


def check_rank_pairs(queries: int, candidates: int, limit: int) -> None:
    """``/rank`` computes and answers a queries x candidates matrix, twice."""
    if queries * candidates > limit:
        raise InvalidInput(
            "candidates",
            f"{queries} queries x {candidates} candidates = {queries * candidates} pairs, "
            f"more than the limit of {limit} (MAX_RANK_PAIRS)",
        )


def check_url_items(items: Sequence[ImageItem], field: str, limit: int) -> None:
    """Each ``img_uri`` is a download of up to ``URL_MAX_BYTES``, all of a request's at once:
    their number bounds what one request can pull into memory."""
    urls = sum(item.img_uri is not None for item in items)
    if urls > limit:
        raise InvalidInput(
            field,
            f"{urls} img_uri items, more than the limit of {limit} (MAX_URL_ITEMS); "
            "send more images as img_blob",
        )


def check_classify_chars(labels: Sequence[str], template: str, limit: int) -> None:
    """``/classify`` encodes every label put into the template: a long template multiplies
    what a small body asks the text tower to read."""
    chars = sum(len(template) - 2 + len(label) for label in labels)
    if chars > limit:
        raise InvalidInput(
            "labels",
            f"{len(labels)} labels in the template make {chars} characters to encode, "
            f"more than the limit of {limit} (MAX_CLASSIFY_CHARS)",
        )
