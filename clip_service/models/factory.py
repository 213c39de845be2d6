"""Making a :class:`~clip_service.models.clip.ClipModel`: the spec's library picked, its
device, precision and image runtime planned (open_clip's ``factory.py`` plays this part).

The backends import the base class; this module imports the backends, so neither imports
the other.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from clip_service.models.backends.open_clip_backend import OpenClipModel
from clip_service.models.backends.transformers_backend import TransformersClipModel
from clip_service.models.clip import ClipModel, ModelUnavailableError, unavailable_message
from clip_service.models.precision import PrecisionSetting, RuntimeSetting, plan
from clip_service.models.preprocess import input_size
from clip_service.models.specs import ClipSpec, parse_clip_spec

if TYPE_CHECKING:
    from clip_service.settings import Settings


def pick_device(setting: str) -> torch.device:
    """``auto``: CUDA when present, else CPU (precision: :func:`.precision.plan`)."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def load_clip_model(
    spec: ClipSpec,
    device_setting: str = "auto",
    trim_text: bool = True,
    precision: PrecisionSetting = "auto",
    image_runtime: RuntimeSetting = "torch",
    onnx_cache_dir: Path | None = None,
) -> ClipModel:
    """Load ``spec`` with its own library; raise :class:`ModelUnavailableError` on failure.

    ``trim_text`` runs the text tower only up to each batch's longest text (and lets
    :meth:`ClipModel.encode_texts_sharing_prefix` share prefixes); off, every text runs
    through the whole context, as the libraries' own reference code does.
    ``precision`` and ``image_runtime`` are resolved by :func:`.precision.plan` (which
    raises on impossible combinations); the ONNX image tower is cached in ``onnx_cache_dir``.
    """
    run = plan(pick_device(device_setting), precision, image_runtime)
    # int8 and bf16 start from fp32 weights: int8 quantises an fp32 export, and open_clip
    # builds bf16 only as mixed precision; both are converted below.
    dtype = torch.float16 if run.precision == "fp16" else torch.float32
    try:
        backend = OpenClipModel if spec.backend == "open_clip" else TransformersClipModel
        model: ClipModel = backend(spec, run.device, dtype, trim_text)
    except (ImportError, OSError, RuntimeError, ValueError) as exc:
        # ImportError: a tokenizer whose package is not installed (SentencePiece for
        # SigLIP v1 repositories in transformers' format).
        raise ModelUnavailableError(unavailable_message(spec, exc)) from exc
    model.precision = run.precision
    if run.image_runtime == "onnx" and "max_num_patches" in model.preprocess_config.params:
        # SigLIP 2 NaFlex: each image gets a patch grid of its own, and the ONNX image tower
        # is exported for one fixed image size. ``auto`` picks torch; asked for, refused.
        if image_runtime == "onnx" or run.precision == "int8":
            raise ModelUnavailableError(
                f"Cannot serve CLIP model {spec.raw!r} with IMAGE_RUNTIME=onnx (or "
                "CLIP_PRECISION=int8): its image processor gives each image a patch grid of "
                "its own (SigLIP 2 NaFlex), and the ONNX image tower takes one fixed image "
                "size. Use IMAGE_RUNTIME=torch (in fp32 or bf16)."
            )
        run = replace(run, image_runtime="torch")
    if run.image_runtime == "onnx":
        from clip_service.models.image_runtime import load_onnx_image_tower

        size = input_size(model.preprocess_config)
        cache = onnx_cache_dir or Path.home() / ".cache" / "clip-service" / "onnx"
        model.onnx_image = load_onnx_image_tower(
            model.model, model._image_features, size, run.precision, cache
        )
        if model.onnx_image is None:  # warned; the image tower runs in fp32 eager torch
            model.precision = "fp32" if run.precision == "int8" else run.precision
    if run.dtype != dtype:
        model.model.to(run.dtype)
        model.dtype = run.dtype
    return model


def load_configured_clip_model(settings: Settings) -> ClipModel:
    """The CLIP model as the settings configure it: what ``ClipEncoder`` serves, and what
    the CLI's in-process commands use, so their vectors are the server's."""
    return load_clip_model(
        parse_clip_spec(settings.clip_model),
        settings.device,
        settings.trim_text_padding,
        settings.clip_precision,
        settings.image_runtime,
        settings.onnx_cache_dir,
    )
