from __future__ import annotations

import base64
import io
import re
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from clip_service.errors import InvalidInput, PayloadTooLarge
from clip_service.inputs.images import MAX_ASPECT_RATIO, decode_base64, decode_image
from tests.conftest import image_bytes, make_image
from tests.image_seeds import READ_ONLY, WRITTEN

LIMIT = 40_000_000


def test_base64_plain_and_data_uri():
    data = image_bytes(make_image(0))
    plain = base64.b64encode(data).decode()
    assert decode_base64(plain, "f") == data
    assert decode_base64(f"data:image/png;base64,{plain}", "f") == data
    with pytest.raises(InvalidInput, match="f: not valid base64"):
        decode_base64("@@@", "f")
    with pytest.raises(InvalidInput, match="empty image"):
        decode_base64("", "f")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "TGA"])
def test_formats_decode_to_rgb(fmt):
    image = decode_image(image_bytes(make_image(3, (40, 30)), fmt), "f", max_pixels=LIMIT)
    assert image.mode == "RGB" and image.size == (40, 30)


def test_alpha_is_composited_on_white():
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image = decode_image(image_bytes(transparent), "f", max_pixels=LIMIT)
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    buffer = io.BytesIO()
    make_image(4, (40, 20)).save(buffer, "JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), "f", max_pixels=LIMIT).size == (20, 40)


def test_truncated_and_garbage_are_invalid_input():
    data = image_bytes(make_image(5), "JPEG")
    with pytest.raises(InvalidInput, match="f: unreadable or truncated"):
        decode_image(data[: len(data) // 2], "f", max_pixels=LIMIT)
    with pytest.raises(InvalidInput, match="f: not a readable image"):
        decode_image(b"not an image", "f", max_pixels=LIMIT)
    with pytest.raises(InvalidInput, match="f: empty image"):
        decode_image(b"", "f", max_pixels=LIMIT)


def test_pixel_limit_is_checked_before_decoding():
    big = image_bytes(Image.new("L", (4000, 3000)), "PNG")
    with pytest.raises(PayloadTooLarge, match="of 12000000 pixels exceeds the limit of 1000000"):
        decode_image(big, "f", max_pixels=1_000_000)


def test_sixteen_bit_gray_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 8).reshape(8, 64).astype(np.uint16)
    image = decode_image(image_bytes(Image.fromarray(ramp)), "f", max_pixels=LIMIT)
    expected = np.rint(ramp / 257).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(image)[..., 0], expected)


def test_float_images_in_zero_one_are_scaled():
    image = decode_image(
        image_bytes(Image.fromarray(np.full((4, 4), 0.5, np.float32)), "TIFF"),
        "f",
        max_pixels=LIMIT,
    )
    assert image.getpixel((0, 0)) == (128, 128, 128)


def test_base64_wrapped_as_the_base64_command_writes_it():
    data = image_bytes(make_image(6, (64, 64)))
    wrapped = base64.encodebytes(data).decode()  # 76 columns, newline-terminated
    assert "\n" in wrapped.rstrip("\n")
    assert decode_base64(wrapped, "f") == data
    assert decode_base64(wrapped.replace("\n", "\r\n"), "f") == data
    assert decode_base64(f"data:image/png;base64,\n{wrapped}", "f") == data
    with pytest.raises(InvalidInput, match="f: not valid base64"):
        decode_base64(wrapped.replace("\n", "\n#"), "f")


# --- hostile images the decoder fuzz (tests/test_fuzz_decode.py) and the served corpus
# found; each raised something other than InvalidInput / PayloadTooLarge (a 500) -------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, rows: bytes, *chunks: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + b"".join(chunks)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _black_png(width: int, height: int) -> bytes:
    return _png(width, height, (b"\0" + b"\0" * 3 * width) * height)


@contextmanager
def peak_growth() -> Iterator[dict[str, int]]:
    """Bytes the process's peak RSS grew by inside the block (Linux VmHWM), in ``["bytes"]``."""

    def kib(field: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+)", text, re.MULTILINE).group(1))

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before, measured = kib("VmRSS"), {}
    try:
        yield measured
    finally:
        measured["bytes"] = (kib("VmHWM") - before) * 1024


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow reads no AVIF")
def test_corrupt_avif_is_invalid_input():
    """libavif fails to decode the AV1 payload: Pillow raises RuntimeError."""
    data = WRITTEN["AVIF", "rgb"]()
    payload = data.index(b"mdat") + 4
    corrupt = data[:payload] + bytes(len(data) - payload)
    with pytest.raises(InvalidInput, match=r"f: unreadable or truncated image .*decode"):
        decode_image(corrupt, "f", max_pixels=LIMIT)


def test_dds_with_unknown_pixel_format_flags_is_invalid_input():
    """DdsImagePlugin raises NotImplementedError from ``Image.open`` for flags it lacks."""
    data = bytearray(WRITTEN["DDS", "rgb"]())
    struct.pack_into("<I", data, 80, 0x4000)  # DDS_PIXELFORMAT.dwFlags
    with pytest.raises(InvalidInput, match=r"unreadable .*pixel format flags 16384"):
        decode_image(bytes(data), "f", max_pixels=LIMIT)


def test_emf_with_an_empty_frame_is_invalid_input():
    """WmfImagePlugin divides by the frame's width: ZeroDivisionError from ``Image.open``."""
    data = bytearray(READ_ONLY["WMF", "emf"]())
    data[24:40] = bytes(16)  # the frame rectangle
    with pytest.raises(InvalidInput, match="f: unreadable or truncated image"):
        decode_image(bytes(data), "f", max_pixels=LIMIT)


def test_eps_is_refused_before_ghostscript_could_run():
    data = WRITTEN["EPS", "rgb"]()
    with pytest.raises(InvalidInput, match="f: EPS images are not accepted"):
        decode_image(data, "f", max_pixels=LIMIT)


@pytest.mark.parametrize("size", [(300_000, 1), (1, 300_000), (MAX_ASPECT_RATIO + 1, 1)])
def test_extreme_aspect_ratio_is_refused_from_the_header(size):
    """A 957-byte PNG of 300000x1 pixels made preprocessing (shorter side scaled up to the
    model input, then cropped) allocate 2.7 GB; it is refused before decoding now."""
    data = _black_png(*size) if size[1] > 1 else _png(*size, b"\0" * (1 + 3 * size[0]))
    assert len(data) < 2000
    with pytest.raises(
        InvalidInput, match=rf"^f: image of {size[0]}x{size[1]} pixels: .*100 times"
    ):
        decode_image(data, "f", max_pixels=LIMIT)


def test_aspect_ratio_at_the_limit_is_accepted():
    image = decode_image(_black_png(MAX_ASPECT_RATIO, 1), "f", max_pixels=LIMIT)
    assert image.size == (MAX_ASPECT_RATIO, 1)


def _icns_around(png: bytes) -> bytes:
    """An ICNS with one 16x16 entry ("icp4") that holds ``png``, of any size."""
    entry = b"icp4" + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def test_frame_over_the_limit_inside_a_container_is_refused_before_decoding():
    """An ICNS says 16x16 and opens its PNG frame only at load, with Image.open: Pillow's
    own check (its process-wide limit, set to ours) refuses it before the pixels exist.
    Without it, the 16 Mpx frame was decoded (64 MB) before anything noticed."""
    icns = _icns_around(_black_png(4000, 4000))
    with peak_growth() as growth, pytest.raises(PayloadTooLarge, match="16000000 pixels"):
        decode_image(icns, "f", max_pixels=4_000_000)
    assert growth["bytes"] < 32 * 2**20


def test_frame_unlike_its_header_is_refused():
    """IPTC declares 16x16 and embeds a 64x64 JPEG: Pillow would hand back pixels of
    another size than the image says it has."""

    def field(record: int, dataset: int, value: bytes) -> bytes:
        return struct.pack(">BBBH", 0x1C, record, dataset, len(value)) + value

    jpeg = image_bytes(Image.new("L", (64, 64)), "JPEG")
    iptc = (
        field(3, 60, b"\x01\x00")
        + field(3, 20, struct.pack(">H", 16))
        + field(3, 30, struct.pack(">H", 16))
        + field(3, 120, b"\x05")  # JPEG
        + field(8, 10, jpeg)
    )
    with pytest.raises(InvalidInput, match=r"f: unreadable image .*does not match its header"):
        decode_image(iptc, "f", max_pixels=LIMIT)


def test_png_text_chunks_are_capped():
    """70 zTXt chunks of 1 MB each, in a 74 KB 8x8 PNG: refused after 8 MiB, not 64."""
    text = zlib.compress(b"\0" * (2**20 - 64))
    chunks = [_png_chunk(b"zTXt", b"k%d\0\0" % i + text) for i in range(70)]
    data = _png(8, 8, (b"\0" + b"\0" * 24) * 8, *chunks)
    with peak_growth() as growth, pytest.raises(InvalidInput, match="text chunks"):
        decode_image(data, "f", max_pixels=LIMIT)
    assert growth["bytes"] < 24 * 2**20


@pytest.mark.parametrize(
    ("values", "expected"),
    [([np.nan, 0.5, 1.0], [0, 128, 255]), ([np.inf, -np.inf, 7.0], [255, 0, 7])],
)
def test_float_images_with_nan_and_infinities_decode(values, expected):
    pixels = np.array([values], np.float32)
    image = decode_image(image_bytes(Image.fromarray(pixels), "TIFF"), "f", max_pixels=LIMIT)
    assert np.asarray(image)[0, :, 0].tolist() == expected
