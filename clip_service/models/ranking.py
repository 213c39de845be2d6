"""Rank math: cosine similarities, and the probabilities the model's own rule gives them.

CLIP was trained with a softmax over a batch, so its zero-shot probabilities are a softmax
over the candidates of ``logit_scale * cosine``. SigLIP (and SigLIP 2) was trained with a
sigmoid per pair and a learned bias: each pair's probability is
``sigmoid(logit_scale * cosine + logit_bias)``, independent of the other candidates. The
rule belongs to the loaded model (:attr:`ClipModel.scoring`), so every route scores alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ScoringRule = Literal["softmax", "sigmoid"]


@dataclass(frozen=True)
class Scoring:
    """How a model turns cosines into probabilities: ``logit_scale`` is already
    exponentiated; ``logit_bias`` is the sigmoid rule's learned bias (None for softmax)."""

    rule: ScoringRule
    logit_scale: float
    logit_bias: float | None = None

    def __post_init__(self) -> None:
        if (self.rule == "sigmoid") != (self.logit_bias is not None):
            raise ValueError(f"the {self.rule} rule with logit_bias={self.logit_bias}")

    def probabilities(self, cosine: np.ndarray) -> np.ndarray:
        """(q, c) cosines -> (q, c) probabilities: per row softmax, or per pair sigmoid."""
        logits = self.logit_scale * cosine
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
            # 1 / (1 + exp(-x)), written so that neither sign overflows.
            positive = np.exp(-np.abs(logits))
            return np.where(logits >= 0, 1 / (1 + positive), positive / (1 + positive))
        logits = logits - logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(vectors.dtype).tiny)


def rank(
    queries: np.ndarray, candidates: np.ndarray, scoring: Scoring
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the probabilities of each candidate by the model's rule, and the cosines.

    The probabilities are what the model's own zero-shot classifier would give.
    """
    cosine = (
        l2_normalize(queries.astype(np.float64)) @ l2_normalize(candidates.astype(np.float64)).T
    )
    return scoring.probabilities(cosine), cosine
