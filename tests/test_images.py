from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from clip_service.errors import InvalidInput, PayloadTooLarge
from clip_service.images import decode_base64, decode_image
from tests.conftest import image_bytes, make_image

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
    with pytest.raises(PayloadTooLarge, match="4000x3000 pixels exceeds"):
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
