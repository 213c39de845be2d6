from __future__ import annotations

import numpy as np
import torch

from clip_service.models.ranking import l2_normalize, rank


def test_rank_is_clip_softmax_over_candidates():
    rng = np.random.default_rng(0)
    queries, candidates = rng.normal(size=(3, 16)), rng.normal(size=(5, 16)) * 7
    probabilities, cosines = rank(queries.astype(np.float32), candidates.astype(np.float32), 100.0)
    q = torch.nn.functional.normalize(torch.tensor(queries), dim=-1)
    c = torch.nn.functional.normalize(torch.tensor(candidates), dim=-1)
    expected_cos = q @ c.T
    np.testing.assert_allclose(cosines, expected_cos.numpy(), atol=1e-6)
    np.testing.assert_allclose(
        probabilities, (100.0 * expected_cos).softmax(dim=-1).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    assert probabilities.shape == cosines.shape == (3, 5)


def test_large_scale_does_not_overflow():
    vectors = np.eye(4, dtype=np.float32)
    probabilities, _ = rank(vectors, vectors, 1e4)
    np.testing.assert_allclose(probabilities, np.eye(4), atol=1e-12)


def test_normalize_tolerates_zero_vectors():
    out = l2_normalize(np.zeros((2, 3), dtype=np.float32))
    assert np.isfinite(out).all()
