"""Numeric precision and image runtime of the CLIP towers (settings CLIP_PRECISION, IMAGE_RUNTIME).

fp32 on CPU and fp16 on CUDA are the defaults. The faster CPU options are opt-in because
they change embeddings slightly (docs/configuration.md, "Precision and runtime"): ``bf16``
converts the weights (not ``torch.autocast``, which is many times slower on CPU for
open_clip's ViT) and ``int8`` runs the image tower through ONNX Runtime's dynamic
quantisation (the text tower stays fp32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from clip_service.models.specs import ModelSpecError

PrecisionSetting = Literal["auto", "fp32", "fp16", "bf16", "int8"]
RuntimeSetting = Literal["auto", "torch", "onnx"]

_DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int8": torch.float32,
}

# Smallest cosine to the fp32 eager embedding a runtime must reach on the check batch at load.
# fp32 kernels differ only by float rounding; int8's bound is well under what it reaches on
# random-weight ViT-B-32 (0.9998), so only a broken export fails it.
MIN_COSINE = {"fp32": 0.99999, "int8": 0.99}


class PrecisionError(ModelSpecError):
    """A precision / device / runtime combination that cannot run (stops the server)."""


@dataclass(frozen=True)
class Plan:
    """How the model is run: where, in what precision, and by which image runtime."""

    device: torch.device
    precision: str
    image_runtime: Literal["torch", "onnx"]

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the torch weights (int8 keeps fp32 torch towers)."""
        return _DTYPES[self.precision]


def plan(
    device: torch.device, precision: PrecisionSetting = "auto", runtime: RuntimeSetting = "auto"
) -> Plan:
    """Resolve the settings for ``device``; raise :class:`PrecisionError` on impossible ones.

    ``auto`` precision: fp16 on CUDA, fp32 on CPU. ``auto`` runtime: ONNX Runtime for the
    image tower on CPU in fp32 or int8 (int8 needs it), torch otherwise. The CPU build of
    ONNX Runtime has no CUDA kernels, and fp16 / int8 are only fast where they are chosen.
    """
    cuda = device.type == "cuda"
    if precision == "auto":
        precision = "fp16" if cuda else "fp32"
    if precision == "fp16" and not cuda:
        raise PrecisionError("CLIP_PRECISION=fp16 needs a CUDA device; on CPU use bf16 or int8")
    if precision == "int8" and cuda:
        raise PrecisionError("CLIP_PRECISION=int8 runs on CPU only; on CUDA use fp16 or bf16")
    onnx_ok = not cuda and precision in MIN_COSINE
    if runtime == "onnx" and not onnx_ok:
        raise PrecisionError(
            f"IMAGE_RUNTIME=onnx runs on CPU in fp32 or int8, not {precision} on {device.type}"
        )
    if runtime == "torch" and precision == "int8":
        raise PrecisionError("CLIP_PRECISION=int8 runs the image tower in ONNX Runtime")
    chosen = "onnx" if onnx_ok and runtime != "torch" else "torch"
    return Plan(device=device, precision=precision, image_runtime=chosen)
