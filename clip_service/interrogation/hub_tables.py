"""clip-interrogator's published label-table embeddings, fetched from the Hub instead of built.

clip-interrogator 0.6.0 (``download_cache=True``, its default) downloads precomputed table
embeddings from ``CACHE_URL_BASE`` rather than encoding ~112k labels, which takes hours on a
CPU. :func:`fetch_table` does the same through ``huggingface_hub``, so ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``, ``HF_TOKEN`` and the Hugging Face cache work as they do for model weights,
and checks each file with the library's own rule before anyone ranks with it. Any problem is
one log line and ``None``: the caller then builds the table locally, as the library does.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from huggingface_hub import (
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.numpy import load_file

from clip_service.interrogation.label_cache import FetchTable
from clip_service.interrogation.labels import LabelTable
from clip_service.models.specs import parse_clip_spec

__all__ = ["REPO_ID", "REVISION", "fetch_table", "published_name", "published_tables"]

logger = logging.getLogger(__name__)

# 0.6.0's CACHE_URL_BASE is "https://huggingface.co/pharma/ci-preprocess/resolve/main/": the
# /resolve/ URL of this model repository at this revision (a test checks they stay equal).
REPO_ID = "pharma/ci-preprocess"
REVISION = "main"


def published_name(clip_spec: str) -> str | None:
    """The name 0.6.0 files this model's tables under, or None when nothing can be published.

    The library sanitises its ``clip_model_name`` (``ARCH/tag``) with ``/`` and ``@`` -> ``_``.
    Only open_clip architecture + pretrained tags have such a name: HF repos, ``hf-hub:`` and
    local directories are not models the library can load by name, so it never published any.
    Raises :class:`~clip_service.models.specs.ModelSpecError` for a spec that names no model.
    """
    spec = parse_clip_spec(clip_spec)
    if spec.backend != "open_clip" or spec.pretrained is None:
        return None
    return f"{spec.name}/{spec.pretrained}".replace("/", "_").replace("@", "_")


def published_tables(clip_spec: str) -> FetchTable | None:
    """A :class:`~.label_cache.LabelCache` ``fetch`` for this model's published tables (run
    off the event loop), or None when the library publishes none for it."""
    name = published_name(clip_spec)
    if name is None:
        return None

    async def fetch(table: LabelTable, dim: int | None) -> np.ndarray | None:
        return await asyncio.to_thread(fetch_table, name, table, dim=dim)

    return fetch


def fetch_table(
    name: str,
    table: LabelTable,
    *,
    dim: int | None = None,
    timeout_s: float = constants.HF_HUB_ETAG_TIMEOUT,
) -> np.ndarray | None:
    """The published float16 (n, d) embeddings of ``table`` for model ``name``, or None.

    ``name`` is :func:`published_name`'s; ``dim``, if given, is the width the embeddings must
    have. ``timeout_s`` (default ``HF_HUB_ETAG_TIMEOUT``, 10 s) bounds the connection and the
    first response from the Hub; the body is read under huggingface_hub's own
    ``HF_HUB_DOWNLOAD_TIMEOUT`` (per read, resumed up to 5 times). Blocking: run it in a worker
    thread from async code. Never raises for network, Hub or file problems: it logs one line
    and returns None.
    """
    filename = f"{name}_{table.name}.safetensors"
    source = f"{REPO_ID}/{filename}"
    try:
        path = _download(filename, timeout_s)
    except Exception as e:  # whatever the network, the Hub or the cache raise: build instead
        if isinstance(e, OfflineModeIsEnabled):
            logger.info(
                "label table %s: HF_HUB_OFFLINE is set and %s is not in the Hugging Face "
                "cache; building it locally",
                table.name,
                source,
            )
        elif _not_published(e):
            logger.info(
                "label table %s: %s is not published on the Hub; building it locally",
                table.name,
                source,
            )
        else:
            logger.warning(
                "label table %s: could not download %s (%s); building it locally",
                table.name,
                source,
                _one_line(e),
            )
        return None
    embeds, problem = _read(path, table, dim)
    if embeds is None:
        logger.warning(
            "label table %s: %s is unusable (%s); building it locally", table.name, source, problem
        )
        return None
    logger.info("label table %s: using the published embeddings %s", table.name, source)
    return embeds


def _download(filename: str, timeout_s: float) -> str:
    """The file's path in the Hugging Face cache, downloaded if needed; raises on failure.

    The bounded probe comes first because ``hf_hub_download``, when its metadata request fails
    and nothing is cached, retries it up to six times with a 60 s timeout and back-off: minutes
    of waiting on a dead or firewalled Hub. After a failed probe (offline mode included: it
    fails before sending anything) only a copy already in the cache is used, which is where
    ``hf_hub_download`` itself would look.
    """
    try:
        get_hf_file_metadata(hf_hub_url(REPO_ID, filename, revision=REVISION), timeout=timeout_s)
    except Exception:
        cached = try_to_load_from_cache(REPO_ID, filename, revision=REVISION)
        if isinstance(cached, str):
            return cached
        raise
    return hf_hub_download(REPO_ID, filename, revision=REVISION, etag_timeout=timeout_s)


def _read(path: str, table: LabelTable, dim: int | None) -> tuple[np.ndarray | None, str]:
    """(embeddings, "") if the file passes 0.6.0's check and ours, else (None, why not).

    0.6.0 trusts a file whose ``hash`` holds the ord() of each hex digit of the table's label
    hash; shape, dtype and finiteness are checked too, since a file that passes the hash but
    not those would break or silently skew the ranking.
    """
    try:
        tensors = load_file(path)
    except Exception as e:  # truncated or not safetensors at all, whatever the library raises
        return None, f"unreadable: {_one_line(e)}"
    if "embeds" not in tensors or "hash" not in tensors:
        return None, f"holds {sorted(tensors)}, expected 'embeds' and 'hash'"
    expected_hash = np.array([ord(c) for c in table.hash], dtype=np.int8)
    if not np.array_equal(tensors["hash"], expected_hash):
        return None, "hash mismatch: made for a different label list"
    embeds = tensors["embeds"]
    if embeds.dtype != np.float16:
        return None, f"embeds are {embeds.dtype}, expected float16"
    if embeds.ndim != 2 or embeds.shape[0] != len(table.labels):
        return None, f"embeds have shape {embeds.shape} for {len(table.labels)} labels"
    if dim is not None and embeds.shape[1] != dim:
        return None, f"embeds are {embeds.shape[1]} wide, the model's are {dim}"
    if not np.isfinite(embeds).all():
        return None, "embeds hold non-finite values"
    return embeds, ""


def _not_published(error: Exception) -> bool:
    """Whether the Hub answered that the repository, revision or file does not exist."""
    missing = RemoteEntryNotFoundError | RepositoryNotFoundError | RevisionNotFoundError
    if isinstance(error, missing):
        return True
    return isinstance(error, HfHubHTTPError) and error.response.status_code == 404


def _one_line(error: Exception) -> str:
    """An exception as one log-friendly line (Hub errors span several lines)."""
    return " ".join(f"{type(error).__name__}: {error}".split())
