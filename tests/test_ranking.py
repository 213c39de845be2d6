from __future__ import annotations

import numpy as np
import pytest
import torch

from clip_service.models.ranking import Scoring, l2_normalize, rank

SOFTMAX = Scoring("softmax", 100.0)


def _cosines(queries: np.ndarray, candidates: np.ndarray) -> torch.Tensor:
    q = torch.nn.functional.normalize(torch.tensor(queries), dim=-1)
    return q @ torch.nn.functional.normalize(torch.tensor(candidates), dim=-1).T


def test_rank_is_clip_softmax_over_candidates():
    rng = np.random.default_rng(0)
    queries, candidates = rng.normal(size=(3, 16)), rng.normal(size=(5, 16)) * 7
    probabilities, cosines = rank(
        queries.astype(np.float32), candidates.astype(np.float32), SOFTMAX
    )
    expected_cos = _cosines(queries, candidates)
    np.testing.assert_allclose(cosines, expected_cos.numpy(), atol=1e-6)
    np.testing.assert_allclose(
        probabilities, (100.0 * expected_cos).softmax(dim=-1).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    assert probabilities.shape == cosines.shape == (3, 5)


def test_rank_is_siglip_sigmoid_per_pair():
    """SigLIP's rule: each pair alone, ``sigmoid(scale * cos + bias)``; a candidate's score
    does not depend on the others."""
    rng = np.random.default_rng(1)
    queries, candidates = rng.normal(size=(3, 16)), rng.normal(size=(5, 16))
    scoring = Scoring("sigmoid", 10.0, -1.5)
    probabilities, _ = rank(queries, candidates, scoring)
    expected = torch.sigmoid(_cosines(queries, candidates) * 10.0 - 1.5).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-12)
    alone, _ = rank(queries, candidates[2:3], scoring)
    np.testing.assert_allclose(alone[:, 0], probabilities[:, 2], atol=1e-15)


def test_sigmoid_does_not_overflow():
    vectors = np.eye(4, dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        probabilities, _ = rank(vectors, -vectors, Scoring("sigmoid", 1e4, 10.0))
    np.testing.assert_allclose(np.diag(probabilities), 0.0, atol=1e-300)
    assert np.isfinite(probabilities).all()


def test_rule_and_bias_go_together():
    with pytest.raises(ValueError, match="sigmoid"):
        Scoring("sigmoid", 10.0)
    with pytest.raises(ValueError, match="softmax"):
        Scoring("softmax", 10.0, -10.0)


def test_large_scale_does_not_overflow():
    vectors = np.eye(4, dtype=np.float32)
    probabilities, _ = rank(vectors, vectors, Scoring("softmax", 1e4))
    np.testing.assert_allclose(probabilities, np.eye(4), atol=1e-12)


def test_normalize_tolerates_zero_vectors():
    out = l2_normalize(np.zeros((2, 3), dtype=np.float32))
    assert np.isfinite(out).all()
