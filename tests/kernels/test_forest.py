"""kernels.forest against scikit-learn's IsolationForest.score_samples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from kernels.forest import isolation_forest_score_samples, pack_isolation_forest

CASES = [
    # n_estimators, max_samples, max_features, heap_max_depth (0 = node-list path)
    (25, "auto", 1.0, 14),
    (25, "auto", 1.0, 0),
    (15, 16, 0.5, 14),
    (15, 40, 0.4, 0),
    (10, 2, 1.0, 14),
    (5, 1, 1.0, 14),
]


@pytest.mark.parametrize(("n_trees", "max_samples", "max_features", "heap"), CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_sklearn(n_trees, max_samples, max_features, heap, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(600, 7)) * rng.uniform(0.1, 100, 7)
    X[rng.random(X.shape) < 0.05] = np.nan  # sklearn routes NaN per node
    model = IsolationForest(
        n_estimators=n_trees,
        max_samples=max_samples,
        max_features=max_features,
        random_state=seed,
    ).fit(X)
    Y = np.vstack([X[:200], rng.normal(size=(300, 7)) * 50])
    Y[rng.random(Y.shape) < 0.05] = np.nan
    packed = pack_isolation_forest(model, heap_max_depth=heap)
    assert (packed.heap_depth > 0) == (heap > 0)
    got = isolation_forest_score_samples(packed, Y)
    np.testing.assert_allclose(got, model.score_samples(Y), rtol=0, atol=1e-9)
    assert packed.offset == model.offset_


def test_threshold_ties_are_decided_like_sklearn():
    # rows exactly on split thresholds (float32 rounding matters there)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 3))
    model = IsolationForest(n_estimators=20, random_state=0).fit(X)
    thr = model.estimators_[0].tree_.threshold
    thr = thr[model.estimators_[0].tree_.children_left >= 0]
    Y = np.repeat(thr[:, None], 3, axis=1)
    Y = np.vstack([Y, np.nextafter(Y, np.inf), np.nextafter(Y.astype(np.float32), -np.inf)])
    for heap in (14, 0):
        got = isolation_forest_score_samples(pack_isolation_forest(model, heap_max_depth=heap), Y)
        np.testing.assert_allclose(got, model.score_samples(Y), rtol=0, atol=1e-9)


def test_empty_and_shape_errors():
    X = np.random.default_rng(0).normal(size=(50, 3))
    packed = pack_isolation_forest(IsolationForest(n_estimators=3, random_state=0).fit(X))
    assert isolation_forest_score_samples(packed, np.empty((0, 3))).shape == (0,)
    with pytest.raises(ValueError, match="3 columns"):
        isolation_forest_score_samples(packed, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="call fit first"):
        pack_isolation_forest(IsolationForest())
