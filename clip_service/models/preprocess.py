"""Image preprocessing taken from the model's own configuration.

The model service reports a :class:`PreprocessConfig` (plain data); the entry service
rebuilds the model's own transform from it, so images are decoded and resized next to the
HTTP layer and only model-ready pixels travel to the batched encoder. Each backend's own
preprocessing code is used, so pixels match what open_clip / transformers produce.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

Preprocessor = Callable[[Image.Image], np.ndarray]


class PreprocessConfig(BaseModel):
    """``kind`` names the library; ``params`` is its own serialised config."""

    kind: Literal["open_clip", "transformers"]
    params: dict[str, Any] = Field(default_factory=dict)


def input_size(config: PreprocessConfig) -> int:
    """The longest side, in pixels, of the images the model sees."""
    params = config.params
    if config.kind == "open_clip":
        size = params["size"]
        return int(max(size) if isinstance(size, list | tuple) else size)
    size = params["crop_size"] if params.get("do_center_crop") else params["size"]
    return int(max(size.values()) if isinstance(size, dict) else size)


def build_preprocessor(config: PreprocessConfig) -> Preprocessor:
    """PIL image -> (3, H, W) float32 array, exactly as the model's library prepares it."""
    if config.kind == "open_clip":
        from open_clip.transform import PreprocessCfg, image_transform_v2

        transform = image_transform_v2(PreprocessCfg(**config.params), is_train=False)
        return lambda image: transform(image).numpy()
    import transformers

    params = dict(config.params)
    processor_cls = getattr(transformers, params.pop("image_processor_type"))
    processor = processor_cls(**params)

    def preprocess(image: Image.Image) -> np.ndarray:
        pixels = processor(images=image, return_tensors="np")["pixel_values"]
        return pixels[0].astype(np.float32, copy=False)

    return preprocess
