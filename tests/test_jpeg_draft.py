"""JPEG_DRAFT: off decodes exactly as before; on, JPEGs decode at reduced scale, >= 2x input."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from clip_service.inputs.images import decode_image
from clip_service.models.clip import ModelInfo
from clip_service.models.preprocess import PreprocessConfig, build_preprocessor
from clip_service.server.encoding import ItemEncoder
from clip_service.settings import Settings
from tests.conftest import image_bytes

OPEN_CLIP = PreprocessConfig(
    kind="open_clip",
    params={
        "size": (224, 224),
        "mode": "RGB",
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    },
)


def _photo(width: int, height: int) -> Image.Image:
    """Smooth gradients with a little noise: what drafting is meant for."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], -1)
    pixels += np.random.default_rng(0).normal(0, 4, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return image_bytes(_photo(2000, 1500), "JPEG")


def _decode(data: bytes, draft_to: int | None = None) -> Image.Image:
    return decode_image(data, "image", max_pixels=10**8, draft_to=draft_to)


def test_without_draft_the_decode_is_pillows_full_decode(jpeg):
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(jpeg))).convert("RGB")
    np.testing.assert_array_equal(np.asarray(_decode(jpeg)), np.asarray(expected))


def test_draft_decodes_at_reduced_scale_keeping_both_sides_large_enough(jpeg):
    full, drafted = _decode(jpeg), _decode(jpeg, draft_to=448)
    assert drafted.size == (1000, 750)  # 1/2: 1/4 would make the short side 375 < 448
    preprocess = build_preprocessor(OPEN_CLIP)
    difference = np.abs(preprocess(drafted) - preprocess(full))
    assert 0 < difference.mean() < 0.02


def test_draft_leaves_other_formats_alone():
    png = image_bytes(_photo(900, 700))
    np.testing.assert_array_equal(np.asarray(_decode(png, 448)), np.asarray(_decode(png)))


class _Encoder:
    async def info(self) -> ModelInfo:
        return ModelInfo(
            spec="tiny",
            backend="open_clip",
            embedding_size=8,
            logit_scale=1.0,
            scoring="softmax",
            logit_bias=None,
            context_length=77,
            device="cpu",
            dtype="float32",
            precision="fp32",
            image_runtime="torch",
            preprocess=OPEN_CLIP,
        )


@pytest.mark.parametrize(("draft", "size"), [(False, (2000, 1500)), (True, (1000, 750))])
def test_setting_drafts_to_twice_the_model_input(jpeg, draft, size):
    items = ItemEncoder(_Encoder(), Settings(jpeg_draft=draft))

    def decoded_size(image: Image.Image) -> np.ndarray:
        return np.array(image.size)

    (decoded,) = asyncio.run(items.preprocessed(jpeg, "image", [decoded_size]))
    assert tuple(decoded) == size
