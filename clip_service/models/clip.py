"""One interface over both CLIP backends (open_clip and transformers).

A :class:`ClipModel` is loaded once per model-service worker. It takes preprocessed pixel
arrays (the entry service decodes and preprocesses, see :mod:`clip_service.models.preprocess`) and
raw texts, and returns the models' raw (un-normalised) embeddings as float32 numpy arrays.
"""

from __future__ import annotations

import functools
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import BaseModel

from clip_service.models.preprocess import PreprocessConfig
from clip_service.models.ranking import Scoring, ScoringRule
from clip_service.models.specs import ClipSpec
from clip_service.models.text_prefix import (
    PrefixCache,
    PrefixedRows,
    PrefixTower,
    encode_sharing_prefix,
)

if TYPE_CHECKING:
    from clip_service.models.image_runtime import OnnxImageTower


class ModelUnavailableError(RuntimeError):
    """The model could not be loaded (typically: not cached and no hub access)."""


class ModelSummary(BaseModel):
    """Which model is loaded and how it runs (what ``GET /model`` shows of it)."""

    spec: str
    backend: str
    embedding_size: int
    logit_scale: float
    # How /rank, /classify and custom tables turn cosines into probabilities: "softmax"
    # over the candidates (CLIP), or "sigmoid" of each pair with ``logit_bias`` (SigLIP).
    scoring: ScoringRule
    logit_bias: float | None
    context_length: int
    device: str
    # dtype of the torch weights; precision and image_runtime say how images are encoded
    # (int8: ONNX Runtime's quantised image tower, fp32 torch text tower).
    dtype: str
    precision: str
    image_runtime: str

    def scorer(self) -> Scoring:
        """The model's rule for probabilities (:mod:`clip_service.models.ranking`)."""
        return Scoring(self.scoring, self.logit_scale, self.logit_bias)


class ModelInfo(ModelSummary):
    """What callers need to know about the loaded model; served by the info route."""

    preprocess: PreprocessConfig


class ClipModel(ABC):
    """A loaded CLIP model; subclasses adapt one library."""

    spec: ClipSpec
    device: torch.device
    dtype: torch.dtype
    embedding_size: int
    context_length: int
    # Text padded only to each batch's longest text (and prefixes shared), not the context.
    trim_text: bool
    precision: str = "fp32"
    # The text tower taken apart for prefix sharing (:mod:`.text_prefix`), where it can be.
    prefix_tower: PrefixTower | None = None
    # Set by load_clip_model when ONNX Runtime runs the image tower.
    onnx_image: OnnxImageTower | None = None

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """``exp`` of the model's learned log temperature, as used for its logits."""

    @property
    def logit_bias(self) -> float | None:
        """The learned bias of a sigmoid-trained model (SigLIP); None for CLIP."""
        return None

    @property
    def scoring(self) -> Scoring:
        """The rule the model was trained with: a learned bias means SigLIP's sigmoid loss."""
        bias = self.logit_bias
        return Scoring("softmax" if bias is None else "sigmoid", self.logit_scale, bias)

    @property
    @abstractmethod
    def preprocess_config(self) -> PreprocessConfig: ...

    @abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _tokenize(self, texts: list[str], trim: bool) -> Any:
        """Model inputs for ``texts``, truncated to the context (under the tokenizer lock,
        outside the forward lock)."""

    @abstractmethod
    def _text_features(self, tokens: Any, trim: bool) -> torch.Tensor:
        """``trim``: run only up to the longest text, else through the whole context."""

    @abstractmethod
    def _count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts before truncation (runs under the tokenizer lock)."""

    def _prefix_inputs(self, tokens: Any) -> tuple[PrefixTower, torch.Tensor, torch.Tensor] | None:
        """The text tower taken apart, token ids and end-of-text positions for ``tokens``;
        None where the tower is not one :mod:`.text_prefix` knows (or trimming is off)."""
        return None

    # One forward pass at a time per process: the image and text batchers run in threads, and
    # concurrent passes would only split the same cores while making numerics depend on
    # timing (kernels pick their blocking from the threads they get).
    _forward_lock = threading.Lock()
    # Hugging Face's fast tokenizers keep padding and truncation as state of one shared Rust
    # object: a count (no padding) beside a batch (padded) made the batch ragged (a 500).
    _tokenizer_lock = threading.Lock()

    def tokenize(self, texts: Sequence[str]) -> Any:
        """Model inputs for ``texts`` (one tokenizer call at a time)."""
        with self._tokenizer_lock:
            return self._tokenize(list(texts), self.trim_text)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts before truncation, start and end markers included."""
        with self._tokenizer_lock:
            return self._count_tokens(texts)

    @functools.cached_property
    def _prefixes(self) -> PrefixCache:
        """Recent chain-step prefixes' keys and values (see :mod:`.text_prefix`)."""
        return PrefixCache()

    @torch.inference_mode()
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) float32 preprocessed pixels -> (n, d) float32 embeddings."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        with self._forward_lock:
            if self.onnx_image is not None:
                return self.onnx_image(pixels)
            features = self._image_features(torch.from_numpy(pixels).to(self.device, self.dtype))
        return features.float().cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, d) float32 embeddings; texts over the context are truncated."""
        if not texts:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        tokens = self.tokenize(texts)
        with self._forward_lock:
            features = self._text_features(tokens, self.trim_text)
        return features.float().cpu().numpy()

    def encode_texts_sharing_prefix(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`encode_texts` for texts that share a long token prefix (a chain step).

        Texts are tokenized (and truncated) as usual; their longest common token prefix runs
        through the tower once and each text's suffix is then run against its keys/values
        (:mod:`.text_prefix`), in bounded chunks. Equal to :meth:`encode_texts` up to float
        rounding. Towers other than open_clip's standard ``CLIP`` and transformers'
        ``CLIPTextModel``, and models loaded with text trimming off, take the plain path:
        same result, without the saving.
        """
        rows = self.prefixed(texts) if texts else None
        return self.encode_texts(texts) if rows is None else self.encode_prefixed(rows)

    def prefixed(self, texts: Sequence[str]) -> PrefixedRows | None:
        """``texts`` tokenized for :meth:`encode_prefixed`, their shared prefix found; None
        where the tower cannot share prefixes (then :meth:`encode_texts` is the way)."""
        split = self._prefix_inputs(self.tokenize(texts))
        return None if split is None else PrefixedRows.of(*split[1:])

    @torch.inference_mode()
    def encode_prefixed(self, rows: PrefixedRows) -> np.ndarray:
        """(n, d) float32 embeddings of :meth:`prefixed` rows (or a slice of them)."""
        assert self.prefix_tower is not None  # prefixed() gave no rows otherwise
        features = encode_sharing_prefix(
            self.prefix_tower, rows, self._forward_lock, self._prefixes
        )
        return features.float().cpu().numpy()

    def info(self) -> ModelInfo:
        scoring = self.scoring
        return ModelInfo(
            spec=self.spec.raw,
            backend=self.spec.backend,
            embedding_size=self.embedding_size,
            logit_scale=scoring.logit_scale,
            scoring=scoring.rule,
            logit_bias=scoring.logit_bias,
            context_length=self.context_length,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            precision=self.precision,
            image_runtime="onnxruntime" if self.onnx_image is not None else "torch",
            preprocess=self.preprocess_config,
        )


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


def bias_value(bias: torch.Tensor | None) -> float | None:
    """A learned ``logit_bias`` as a float (None: the model has none)."""
    return None if bias is None else float(bias.detach().float().item())
