"""Fetch a model's files before any worker starts, so a missing model fails once, clearly.

BentoML restarts a worker whose start-up fails, forever; run from an ``on_deployment``
hook in the serving process, this turns "no hub and nothing cached" into one line and a
non-zero exit instead. Workers then load from the local cache.
"""

from __future__ import annotations

import huggingface_hub
import open_clip
from open_clip.pretrained import download_pretrained_from_hf

from clip_service.models.clip import ModelUnavailableError, unavailable_message
from clip_service.models.specs import ClipSpec

_HF_FILES = ["*.json", "*.txt", "*.safetensors"]


def fetch_clip_files(spec: ClipSpec) -> None:
    """Download (or find in the cache) what ``spec`` needs; local specs need nothing."""
    if spec.is_local:
        return
    try:
        if spec.backend == "transformers":
            huggingface_hub.snapshot_download(spec.name, allow_patterns=_HF_FILES)
        elif spec.pretrained is not None:
            open_clip.download_pretrained(open_clip.get_pretrained_cfg(spec.name, spec.pretrained))
        else:
            repo = spec.name.removeprefix("hf-hub:")
            huggingface_hub.hf_hub_download(repo, "open_clip_config.json")
            download_pretrained_from_hf(repo)
    except Exception as exc:  # any hub/network/cache failure: report it in one line
        raise ModelUnavailableError(unavailable_message(spec, exc)) from exc
