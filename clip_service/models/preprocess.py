"""Image preprocessing taken from the model's own configuration.

The model service reports a :class:`PreprocessConfig` (plain data); the entry service
rebuilds the model's own transform from it, so images are decoded and resized next to the
HTTP layer and only model-ready pixels travel to the batched encoder. Each backend's own
preprocessing code is used, so pixels match what open_clip / transformers produce.

SigLIP 2's NaFlex image processor (``Siglip2ImageProcessor``) gives each image a patch
grid of its own aspect ratio, padded to ``max_num_patches`` rows of patches, with a mask and
the grid's shape beside them. The mask is the first ``h * w`` rows, so one fixed-shape array
carries all three: the patch rows, then one row holding ``(h, w)`` (:func:`pack_patches`).
Images of any shape then batch like fixed-size pixels do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    import torch

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
    if "max_num_patches" in params:
        # NaFlex: the side of a square image's grid. Any other aspect ratio gets a shorter
        # short side, and a long side no longer than the ratio times it.
        return int(params["patch_size"] * math.isqrt(params["max_num_patches"]))
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
        out = processor(images=image, return_tensors="np")
        if "spatial_shapes" in out:
            return pack_patches(out["pixel_values"][0], out["spatial_shapes"][0])
        return out["pixel_values"][0].astype(np.float32, copy=False)

    return preprocess


def pack_patches(patches: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(max_num_patches, d) padded patches of an (h, w) grid -> (max_num_patches + 1, d)."""
    packed = np.zeros((patches.shape[0] + 1, patches.shape[1]), dtype=np.float32)
    packed[:-1] = patches
    packed[-1, :2] = grid
    return packed


def unpack_patches(
    packed: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, max_num_patches + 1, d) packed -> patches, pixel_attention_mask, spatial_shapes,
    as ``Siglip2ImageProcessor`` gives them."""
    import torch

    patches = packed[:, :-1]
    shapes = packed[:, -1, :2].round().long()
    positions = torch.arange(patches.shape[1], device=packed.device)
    mask = (positions[None] < (shapes[:, 0] * shapes[:, 1])[:, None]).long()
    return patches, mask, shapes
