"""One interface over both CLIP backends (open_clip and transformers).

A :class:`ClipModel` is loaded once per model-service worker. It takes preprocessed pixel
arrays (the entry service decodes and preprocesses, see :mod:`clip_service.preprocess`) and
raw texts, and returns the models' raw (un-normalised) embeddings as float32 numpy arrays.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from .preprocess import PreprocessConfig
from .specs import ClipSpec


class ModelUnavailableError(RuntimeError):
    """The model could not be loaded (typically: not cached and no hub access)."""


class ModelInfo(BaseModel):
    """What callers need to know about the loaded model; served by the info route."""

    spec: str
    backend: str
    embedding_size: int
    logit_scale: float
    context_length: int
    device: str
    dtype: str
    preprocess: PreprocessConfig


class ClipModel(ABC):
    """A loaded CLIP model; subclasses adapt one library."""

    spec: ClipSpec
    device: torch.device
    dtype: torch.dtype
    embedding_size: int
    context_length: int

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """``exp`` of the model's learned log temperature, as used for its logits."""

    @property
    @abstractmethod
    def preprocess_config(self) -> PreprocessConfig: ...

    @abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _tokenize(self, texts: list[str]) -> Any:
        """Model inputs for ``texts``, truncated to the context (runs outside the lock)."""

    @abstractmethod
    def _text_features(self, tokens: Any) -> torch.Tensor: ...

    @abstractmethod
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts before truncation, start and end markers included."""

    # One forward pass at a time per process: the image and text batchers run in threads, and
    # concurrent passes would only split the same cores while making numerics depend on
    # timing (kernels pick their blocking from the threads they get).
    _forward_lock = threading.Lock()

    @torch.inference_mode()
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) float32 preprocessed pixels -> (n, d) float32 embeddings."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        with self._forward_lock:
            features = self._image_features(batch.to(self.device, self.dtype))
        return features.float().cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, d) float32 embeddings; texts over the context are truncated."""
        if not texts:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        tokens = self._tokenize(list(texts))
        with self._forward_lock:
            features = self._text_features(tokens)
        return features.float().cpu().numpy()

    def info(self) -> ModelInfo:
        return ModelInfo(
            spec=self.spec.raw,
            backend=self.spec.backend,
            embedding_size=self.embedding_size,
            logit_scale=self.logit_scale,
            context_length=self.context_length,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            preprocess=self.preprocess_config,
        )


def pick_device(setting: str) -> tuple[torch.device, torch.dtype]:
    """``auto``: CUDA with fp16 when present, else CPU with fp32."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def load_clip_model(
    spec: ClipSpec, device_setting: str = "auto", trim_text: bool = False
) -> ClipModel:
    """Load ``spec`` with its own library; raise :class:`ModelUnavailableError` on failure.

    ``trim_text`` runs open_clip's text tower only up to each batch's longest text.
    """
    device, dtype = pick_device(device_setting)
    try:
        if spec.backend == "open_clip":
            from .backends.open_clip_backend import OpenClipModel

            return OpenClipModel(spec, device, dtype, trim_text)
        from .backends.transformers_backend import TransformersClipModel

        return TransformersClipModel(spec, device, dtype)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelUnavailableError(unavailable_message(spec, exc)) from exc


def unavailable_message(spec: ClipSpec, exc: BaseException) -> str:
    """One line: which model, why, and how to serve without a hub."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if len(reason) > 160:
        reason = reason[:160].rsplit(" ", 1)[0] + " ..."
    hint = (
        ""
        if spec.is_local
        else " If the model hub cannot be reached and the model is not cached, set "
        "CLIP_MODEL to a local directory (a transformers save_pretrained directory, or "
        "local-dir:PATH for an open_clip one)."
    )
    return f"Cannot load CLIP model {spec.raw!r}: {reason}.{hint}"


def log_to_scale(log_scale: torch.Tensor) -> float:
    return math.exp(log_scale.detach().float().item())
