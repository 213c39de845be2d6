"""Image inputs: base64 and data URIs, and guarded decoding to RGB."""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import sys
import warnings

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from clip_service.errors import InvalidInput, PayloadTooLarge

_DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_ALPHA_BACKGROUND = (255, 255, 255)


# What ``base64`` (76 columns) and MIME encoders put between the characters: skipped.
_WRAPPING = str.maketrans("", "", " \t\r\n")


def decode_base64(blob: str, field: str) -> bytes:
    """Plain base64 or a ``data:image/...;base64,`` URI -> bytes.

    Line breaks and spaces are skipped, so the output of the ``base64`` command (wrapped at
    76 columns) is accepted as it is; any other character outside the alphabet is refused.
    """
    payload = _DATA_URI.sub("", blob.strip(), count=1).translate(_WRAPPING)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(field, "not valid base64") from None
    if not data:
        raise InvalidInput(field, "empty image")
    return data


# Longer side / shorter side. The models' preprocessing scales the shorter side up to the
# input size before cropping, so its cost grows with this ratio, not with the pixel count
# (a 957-byte PNG of 300000x1 pixels asks for a 67200000x224 intermediate at 224 px):
# refused from the header.
MAX_ASPECT_RATIO = 100
# PNG text chunks (zTXt, iTXt: metadata nobody here reads) decompress into memory: Pillow
# allows 64 MiB of them per image, so an 8x8 PNG of 74 KB could cost 64 MiB; 8 MiB still
# holds any real image's XMP and ICC data. (Pillow's documented knob; process-wide.)
PngImagePlugin.MAX_TEXT_MEMORY = 8 * 2**20
# Decoding them would run Ghostscript on the upload (a PostScript interpreter).
REFUSED_FORMATS = frozenset({"EPS"})
# What Pillow's plugins raise on malformed data, besides UnidentifiedImageError (an
# OSError) and the bomb checks: OSError and SyntaxError ("not a ... file", truncated data),
# ValueError and EOFError (bad fields, short reads), struct.error and IndexError (headers
# cut short; ImageFile converts them to SyntaxError only inside ``_open``), KeyError
# (unknown modes and compressions), TypeError (CUR without cursors),
# NotImplementedError (DDS pixel formats, BLP's BLPFormatError), RuntimeError (the AVIF
# and TIFF decoders; RecursionError) and ArithmeticError (EMF frames of zero size).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    NotImplementedError,
    RuntimeError,
    ArithmeticError,
)


def decode_image(
    data: bytes,
    field: str,
    *,
    max_pixels: int,
    draft_to: int | None = None,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
) -> Image.Image:
    """Bytes in any format Pillow reads (but EPS) -> an upright RGB image.

    Size and shape are checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing, and again once decoded (a container's frame can
    differ from its header). Images nested in a container (an ICO's or ICNS's PNG frames,
    IPTC's JPEG) go through Pillow's own check, against ``max_pixels`` too: this sets
    Pillow's process-wide ``MAX_IMAGE_PIXELS`` to it, as the one limit a process decodes
    with. Transparent pixels are composited on white. ``draft_to``: a JPEG is decoded at
    1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling: most of the decoding work skipped) while
    both sides stay >= ``draft_to``; pixels then differ slightly from a full decode
    followed by the same resize (docs/configuration.md).
    """
    if not data:
        raise InvalidInput(field, "empty image")
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format in REFUSED_FORMATS:
                raise InvalidInput(field, f"{image.format} images are not accepted")
            _check_shape(image.size, field, max_pixels, max_aspect_ratio)
            if draft_to is not None and image.format == "JPEG":
                image.draft(None, (draft_to, draft_to))
            image.load()
            if image.im is None or image.im.size != image.size:
                raise InvalidInput(field, "unreadable image (its data does not match its header)")
            _check_shape(image.size, field, max_pixels, max_aspect_ratio)
            ImageOps.exif_transpose(image, in_place=True)
            return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        count = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"of {count.group(1)} pixels " if count else ""
        raise PayloadTooLarge(
            field, f"image {size}exceeds the limit of {max_pixels} pixels"
        ) from None
    except MemoryError:
        raise PayloadTooLarge(field, "image too large to decode in this server's memory") from None
    except UnidentifiedImageError:
        raise InvalidInput(field, "not a readable image") from None
    except _DECODE_ERRORS as exc:
        raise InvalidInput(field, f"unreadable or truncated image ({exc})") from None


def declared_pixels(data: bytes) -> int:
    """Width x height as the image's header declares them, nothing decoded (1 when there is
    no readable header: decoding then refuses it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        return max(1, width * height)
    except Image.DecompressionBombError:
        # Pillow refuses to open a header over twice its limit (the decode limit, once
        # decode_image has run here): larger than any limit, whatever its exact size.
        return sys.maxsize
    except (MemoryError, *_DECODE_ERRORS):
        return 1


def _check_shape(
    size: tuple[int, int], field: str, max_pixels: int, max_aspect_ratio: float
) -> None:
    width, height = size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            field,
            f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels",
        )
    if max(width, height) > max_aspect_ratio * min(width, height):
        raise InvalidInput(
            field,
            f"image of {width}x{height} pixels: one side is more than {max_aspect_ratio:g} "
            "times the other (the limit of its aspect ratio)",
        )


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_DEPTH:
        image = _to_8_bit(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# Integer and float single-channel modes; Pillow's own RGB conversion clips them at 255.
_HIGH_DEPTH = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _to_8_bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit (and 32-bit integer) samples to 0..255, and floats from 0..1 or 0..255.

    In place on one float32 copy (4 bytes per pixel), not float64 temporaries.
    """
    values = np.array(image, dtype=np.float32)
    if image.mode == "F":
        np.nan_to_num(values, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    else:
        scale = np.float32(1 / 257)  # 65535 -> 255
    values *= scale
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return Image.fromarray(values.astype(np.uint8), "L")
