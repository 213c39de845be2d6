"""Rank math: cosine similarities and CLIP's softmax over candidates."""

from __future__ import annotations

import numpy as np


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(vectors.dtype).tiny)


def rank(
    queries: np.ndarray, candidates: np.ndarray, logit_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: softmax over candidates of ``logit_scale * cosine``, and the cosines.

    ``logit_scale`` is the model's own (already exponentiated) temperature, so the
    probabilities are what the model's zero-shot classifier would give.
    """
    cosine = (
        l2_normalize(queries.astype(np.float64)) @ l2_normalize(candidates.astype(np.float64)).T
    )
    logits = logit_scale * cosine
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True), cosine
