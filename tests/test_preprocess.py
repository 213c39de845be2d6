"""The entry service rebuilds each library's own preprocessing from the served config."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
from transformers import CLIPProcessor

from clip_service.models.clip import ModelInfo
from clip_service.models.factory import load_clip_model
from clip_service.models.preprocess import build_preprocessor
from clip_service.models.specs import parse_clip_spec
from tests.conftest import make_image


def _roundtrip(info: ModelInfo) -> ModelInfo:
    """What the entry service receives, also when it comes as JSON."""
    return ModelInfo.model_validate_json(info.model_dump_json())


@pytest.mark.parametrize("size", [(320, 240), (100, 500), (224, 224), (31, 17)])
def test_open_clip_pixels_equal_its_own_transform(tiny_models, size):
    spec = f"local-dir:{tiny_models['open-clip']}"
    _, _, transform = open_clip.create_model_and_transforms(spec)
    info = _roundtrip(load_clip_model(parse_clip_spec(spec), "cpu").info())
    image = make_image(1, size)
    ours = build_preprocessor(info.preprocess)(image)
    np.testing.assert_array_equal(ours, transform(image).numpy())
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32


@pytest.mark.parametrize("size", [(320, 240), (100, 500), (224, 224), (31, 17)])
def test_transformers_pixels_equal_its_own_processor(tiny_models, size):
    path = str(tiny_models["hf-clip"])
    processor = CLIPProcessor.from_pretrained(path)
    info = _roundtrip(load_clip_model(parse_clip_spec(path), "cpu").info())
    image = make_image(2, size)
    ours = build_preprocessor(info.preprocess)(image)
    expected = processor(images=image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_array_equal(ours, expected)
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
