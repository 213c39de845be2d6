"""What the Stable Diffusion web UI routes (:mod:`.routes.sd_webui`) add to the entry: the
served CLIP model under the clip-interrogator extension's name for it, the model names a
request may give, and the request's image string as bytes.

The extension names a model ``ARCH/pretrained`` (``ViT-L-14/openai``) and its clients send
that name with every request; this server serves one model, so any other name is refused
unless the operator maps it here (``CLIP_MODEL_ALIASES``): an answer from another model
than the one asked for must be the operator's choice, never a silent one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from clip_service.errors import InvalidInput, NotFound
from clip_service.inputs.images import decode_base64
from clip_service.inputs.url_fetch import fetch_image_url
from clip_service.models.specs import ModelSpecError, parse_clip_spec
from clip_service.server.encoding import ItemEncoder

IMAGE_FIELD = "image"
URL_SCHEMES = ("http://", "https://")


@functools.cache
def extension_name(spec: str) -> str:
    """The served model's name as the extension lists models: an open_clip ``ARCH:tag``
    or ``ARCH/tag`` spec as ``ARCH/tag``; a model open_clip has no such name for (a Hugging
    Face repo, a local directory) by its spec as it was given."""
    try:
        parsed = parse_clip_spec(spec)
    except ModelSpecError:  # a split deployment's encoder can name a directory not here
        return spec
    if parsed.backend == "open_clip" and parsed.pretrained:
        return f"{parsed.name}/{parsed.pretrained}"
    return spec


def check_model_name(requested: str | None, spec: str, aliases: Iterable[str], field: str) -> None:
    """404 unless ``requested`` names the served model (its extension name or its spec) or
    one of the operator's ``aliases``. No name, as many scripts send, is the served model.
    The name is only compared, never parsed: it must not probe the server's files."""
    if not requested:
        return
    served = extension_name(spec)
    if requested in (served, spec, *aliases):
        return
    raise NotFound(
        f"{field}: {requested!r} is not served here; this server serves {served!r} "
        "(GET /interrogator/models). To answer this name with it, the operator adds the name "
        "to CLIP_MODEL_ALIASES"
    )


async def image_bytes(items: ItemEncoder, image: str | None) -> bytes:
    """The image of a request: base64, plain or as a ``data:image/...;base64,`` URL (the
    extension and A1111 send both), or an http(s) URL, which A1111 fetches too; fetched
    here only as every ``img_uri`` is (the URL policy, ``MAX_URL_ITEMS``)."""
    if image is None or not image.strip():
        raise InvalidInput(
            IMAGE_FIELD, "required: a base64 image (plain or a data:image/...;base64, URL)"
        )
    if image.startswith(URL_SCHEMES):
        if items.settings.max_url_items < 1:
            raise InvalidInput(
                IMAGE_FIELD, "image URLs are not fetched here (MAX_URL_ITEMS=0); send base64"
            )
        return await fetch_image_url(image, IMAGE_FIELD, items.url_policy)
    return decode_base64(image, IMAGE_FIELD)
