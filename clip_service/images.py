"""Image inputs: base64 and data URIs, and guarded decoding to RGB."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidInput, PayloadTooLarge

_DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_ALPHA_BACKGROUND = (255, 255, 255)


def decode_base64(blob: str, field: str) -> bytes:
    """Plain base64 or a ``data:image/...;base64,`` URI -> bytes."""
    payload = _DATA_URI.sub("", blob.strip(), count=1)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(field, "not valid base64") from None
    if not data:
        raise InvalidInput(field, "empty image")
    return data


def decode_image(
    data: bytes, field: str, *, max_pixels: int, draft_to: int | None = None
) -> Image.Image:
    """Bytes in any format Pillow reads -> an upright RGB image.

    The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing. Transparent pixels are composited on white.
    ``draft_to``: a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling: most
    of the decoding work skipped) while both sides stay >= ``draft_to``; pixels then differ
    slightly from a full decode followed by the same resize (README, "JPEG draft decoding").
    """
    if not data:
        raise InvalidInput(field, "empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise PayloadTooLarge(
                    field,
                    f"image of {image.width}x{image.height} pixels exceeds the limit of "
                    f"{max_pixels} pixels",
                )
            if draft_to is not None and image.format == "JPEG":
                image.draft(None, (draft_to, draft_to))
            image.load()
            image = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(field, f"image exceeds the limit of {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise InvalidInput(field, "not a readable image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(field, f"unreadable or truncated image ({exc})") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_DEPTH:
        image = _to_8_bit(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# Integer and float single-channel modes; Pillow's own RGB conversion clips them at 255.
_HIGH_DEPTH = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _to_8_bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit (and 32-bit integer) samples to 0..255, and floats from 0..1 or 0..255."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")
