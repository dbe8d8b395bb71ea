"""Compiled scoring of a fitted scikit-learn ``IsolationForest``.

The model is flattened once into arrays (``pack_isolation_forest``); scoring walks every
tree for every row in a parallel loop over rows. The result equals
``IsolationForest.score_samples`` (scikit-learn 1.9 ``_iforest.py``):

``score = -2 ** (-sum_trees(depth(leaf) + c(n_node_samples(leaf)) - 1) / (n_trees * c(max_samples)))``

with the root at depth 1 and ``c(n)`` the average path length of an unsuccessful
binary-search-tree search (0 for n <= 1, 1 for n = 2). As in scikit-learn, ``X`` is
cast to float32 before comparing with the float64 thresholds, and NaN follows each
node's ``missing_go_to_left``. This module never imports scikit-learn: the model's
attributes are read duck-typed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from kernels._jit import pjit

_EULER_GAMMA = 0.5772156649015329


class PackedForest(NamedTuple):
    """A fitted isolation forest as flat arrays (nodes of all trees concatenated).

    Attributes
    ----------
    tree_offsets : numpy.ndarray of int64, shape (n_trees + 1,)
        First node of each tree; tree k owns nodes ``tree_offsets[k]:tree_offsets[k+1]``.
    feature : numpy.ndarray of int64
        Column of ``X`` tested at each node (already mapped through the tree's feature
        subset); -1 at leaves.
    threshold : numpy.ndarray of float64
        Go left when ``float32(x) <= threshold``.
    left, right : numpy.ndarray of int64
        Children as node numbers within the tree (nodes are numbered breadth first, so
        ``right == left + 1``); -1 at leaves.
    missing_left : numpy.ndarray of bool
        Where NaN goes at each split.
    leaf_value : numpy.ndarray of float64
        Path-length contribution at leaves: ``depth + c(n_node_samples) - 1``.
    heap_depth : int
        Depth of the complete-tree copy below, 0 when the trees are too deep for it.
    heap_feature, heap_threshold, heap_missing_left : numpy.ndarray, shape (n_trees, 2**d - 1)
        The same trees (thresholds as the largest float32 not above the float64 one,
        which decides a float32 ``x`` identically) padded to complete binary trees of depth ``d = heap_depth`` in
        heap order (children of node j are ``2j + 1`` and ``2j + 2``): every row takes
        exactly ``d`` steps, which lets the CPU overlap many rows. A padding node sends
        everything left (threshold ``+inf``, NaN left).
    heap_leaf_value : numpy.ndarray of float64, shape (n_trees, 2**d)
        Path-length contribution of each bottom-level slot.
    max_samples : int
        Samples per tree used in fit (``_max_samples``).
    n_features : int
        Columns ``X`` must have.
    offset : float
        The model's ``offset_`` (``decision_function = score_samples - offset``).
    """

    tree_offsets: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray
    leaf_value: np.ndarray
    heap_depth: int
    heap_feature: np.ndarray
    heap_threshold: np.ndarray
    heap_missing_left: np.ndarray
    heap_leaf_value: np.ndarray
    max_samples: int
    n_features: int
    offset: float


def average_path_length(n_samples) -> np.ndarray:
    """``c(n)``: average path length of an unsuccessful search in a BST of n nodes.

    Parameters
    ----------
    n_samples : array-like of float
        Node sizes.

    Returns
    -------
    numpy.ndarray of float64
        0 for n <= 1, 1 for n = 2, ``2 (ln(n - 1) + gamma) - 2 (n - 1) / n`` above.
    """
    n = np.asarray(n_samples, dtype=np.float64)
    out = np.zeros(n.shape)
    big = n > 2
    out[n == 2] = 1.0
    out[big] = 2.0 * (np.log(n[big] - 1.0) + _EULER_GAMMA) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def _node_depths(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Depth of each node, the root being 1 (as ``Tree.compute_node_depths``)."""
    depth = np.zeros(left.shape[0], dtype=np.int64)
    depth[0] = 1
    # Children always have a larger node id than their parent in scikit-learn trees.
    for node in range(left.shape[0]):
        if left[node] >= 0:
            depth[left[node]] = depth[node] + 1
            depth[right[node]] = depth[node] + 1
    return depth


def _breadth_first(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Node order in which every right child directly follows its left sibling."""
    order = np.empty(left.shape[0], dtype=np.int64)
    order[0] = 0
    head, tail = 0, 1
    while head < tail:
        node = order[head]
        head += 1
        if left[node] >= 0:
            order[tail] = left[node]
            order[tail + 1] = right[node]
            tail += 2
    return order


def _float32_floor(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 <= each threshold: for a float32 x, x <= t iff x <= floor32(t)."""
    t32 = threshold.astype(np.float32)
    above = t32.astype(np.float64) > threshold
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def _to_heap(feature, threshold, left, missing, leaf, depth):
    """One tree (breadth-first arrays, right = left + 1) padded to a complete tree."""
    n_inner = (1 << depth) - 1
    h_feat = np.zeros(n_inner, dtype=np.int64)
    h_thr = np.full(n_inner, np.inf)
    h_miss = np.ones(n_inner, dtype=np.bool_)
    h_leaf = np.zeros(1 << depth)
    stack = [(0, 0)]  # (node, heap slot)
    while stack:
        node, slot = stack.pop()
        if slot >= n_inner:
            h_leaf[slot - n_inner] = leaf[node]
        elif left[node] >= 0:
            h_feat[slot] = feature[node]
            h_thr[slot] = threshold[node]
            h_miss[slot] = missing[node]
            stack.append((left[node], 2 * slot + 1))
            stack.append((left[node] + 1, 2 * slot + 2))
        else:
            # A leaf above the bottom: padding sends every row left down to the bottom.
            while slot < n_inner:
                slot = 2 * slot + 1
            h_leaf[slot - n_inner] = leaf[node]
    return h_feat, h_thr, h_miss, h_leaf


def pack_isolation_forest(model, heap_max_depth: int = 14) -> PackedForest:
    """Flatten a fitted ``sklearn.ensemble.IsolationForest`` for compiled scoring.

    Parameters
    ----------
    model : IsolationForest
        A fitted model (read through ``estimators_``, ``estimators_features_``,
        ``_max_samples``/``max_samples_``, ``_max_features``, ``n_features_in_`` and
        ``offset_``).
    heap_max_depth : int
        Trees at most this deep also get the complete-tree copy used by the fast path
        (memory ``n_trees * 2**depth * 25`` bytes); deeper forests use the node lists.

    Returns
    -------
    PackedForest
        Arrays for :func:`isolation_forest_score_samples`.
    """
    estimators = getattr(model, "estimators_", None)
    if not estimators:
        raise ValueError(
            f"pack_isolation_forest: got a {type(model).__name__} without fitted trees "
            "(no estimators_); pass a fitted sklearn IsolationForest (call fit first)"
        )
    n_features = int(model.n_features_in_)
    max_features = int(getattr(model, "_max_features", n_features))
    # scikit-learn only indexes the tree's feature subset when it is not all columns.
    subsample = max_features != n_features
    max_samples = int(getattr(model, "_max_samples", None) or model.max_samples_)
    offsets = [0]
    max_depth = 0
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("feature", "threshold", "left", "right", "missing", "leaf")
    }
    for k, est in enumerate(estimators):
        tree = est.tree_
        left = np.asarray(tree.children_left, dtype=np.int64)
        right = np.asarray(tree.children_right, dtype=np.int64)
        feat = np.asarray(tree.feature, dtype=np.int64)
        is_leaf = left < 0
        if subsample:
            cols = np.asarray(model.estimators_features_[k], dtype=np.int64)
            feat = np.where(is_leaf, -1, cols[np.where(is_leaf, 0, feat)])
        else:
            feat = np.where(is_leaf, -1, feat)
        if hasattr(tree, "compute_node_depths"):
            depth = np.asarray(tree.compute_node_depths(), dtype=np.float64)
        else:
            depth = _node_depths(left, right).astype(np.float64)
        leaf = depth + average_path_length(tree.n_node_samples) - 1.0
        missing = getattr(tree, "missing_go_to_left", None)
        missing = np.zeros(left.shape[0], bool) if missing is None else np.asarray(missing, bool)
        # Renumber nodes breadth first so that right == left + 1 (a branch-free descent).
        order = _breadth_first(left, right)
        new_id = np.empty_like(order)
        new_id[order] = np.arange(order.shape[0])
        new_left = np.where(is_leaf, -1, new_id[np.where(is_leaf, 0, left)])[order]
        parts["feature"].append(feat[order])
        parts["threshold"].append(np.asarray(tree.threshold, dtype=np.float64)[order])
        parts["left"].append(new_left)
        parts["right"].append(np.where(new_left < 0, -1, new_left + 1))
        parts["missing"].append(missing[order])
        parts["leaf"].append(np.where(is_leaf, leaf, 0.0)[order])
        offsets.append(offsets[-1] + left.shape[0])
        max_depth = max(max_depth, int(depth.max()) - 1)
    heap = [[], [], [], []]
    heap_depth = max(max_depth, 1) if max_depth <= heap_max_depth else 0
    if heap_depth:
        for k in range(len(estimators)):
            for store, arr in zip(
                heap,
                _to_heap(
                    parts["feature"][k],
                    parts["threshold"][k],
                    parts["left"][k],
                    parts["missing"][k],
                    parts["leaf"][k],
                    heap_depth,
                ),
                strict=True,
            ):
                store.append(arr)
    if not heap_depth:
        heap = [[np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0, bool)], [np.zeros(0)]]
    return PackedForest(
        tree_offsets=np.asarray(offsets, dtype=np.int64),
        feature=np.concatenate(parts["feature"]),
        threshold=np.concatenate(parts["threshold"]),
        left=np.concatenate(parts["left"]),
        right=np.concatenate(parts["right"]),
        missing_left=np.concatenate(parts["missing"]),
        leaf_value=np.concatenate(parts["leaf"]),
        heap_depth=heap_depth,
        heap_feature=np.array(heap[0], dtype=np.int64).reshape(len(heap[0]), -1),
        heap_threshold=_float32_floor(np.array(heap[1], dtype=np.float64)).reshape(
            len(heap[1]), -1
        ),
        heap_missing_left=np.array(heap[2], dtype=np.bool_).reshape(len(heap[2]), -1),
        heap_leaf_value=np.array(heap[3], dtype=np.float64).reshape(len(heap[3]), -1),
        max_samples=max_samples,
        n_features=n_features,
        offset=float(getattr(model, "offset_", np.nan)),
    )


_BLOCK = 2048  # rows scored together, tree after tree, so one tree stays in L1 cache


@pjit
def _score_samples(
    X, tree_offsets, feature, threshold, left, missing_left, leaf_value, denom, out
):
    n = X.shape[0]
    n_trees = tree_offsets.shape[0] - 1
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    for b in prange(n_blocks):
        lo = b * _BLOCK
        hi = min(lo + _BLOCK, n)
        depth = np.zeros(hi - lo)
        # Trees are summed in order, as scikit-learn accumulates them, for equal rounding.
        for k in range(n_trees):
            base = tree_offsets[k]
            for i in range(lo, hi):
                node = base
                while left[node] >= 0:
                    x = X[i, feature[node]]
                    # NaN fails every comparison, so it goes right unless missing_left.
                    go_right = not (x <= threshold[node] or (np.isnan(x) and missing_left[node]))
                    node = base + left[node] + go_right
                depth[i - lo] += leaf_value[node]
        for i in range(lo, hi):
            if denom != 0.0:
                out[i] = -(2.0 ** (-depth[i - lo] / denom))
            else:
                # A single training sample: scikit-learn sets the depth ratio to 1.
                out[i] = -0.5


_TILE = 64  # rows descending a tree together (independent loads overlap)


@pjit
def _score_samples_heap(
    Xf, n_cols, feature, threshold, missing_left, leaf_value, depth, denom, check_nan, out
):
    # Flat arrays and unsigned indices: no negative-index wraparound on the hot path.
    n = out.shape[0]
    n_trees = feature.shape[0] // ((1 << depth) - 1)
    n_inner = np.uint64((1 << depth) - 1)
    n_chunks = (n + _BLOCK - 1) // _BLOCK
    one = np.uint64(1)
    for c in prange(n_chunks):
        nodes = np.zeros(_TILE, dtype=np.uint64)
        total = np.zeros(_TILE)
        for lo in range(c * _BLOCK, min(c * _BLOCK + _BLOCK, n), _TILE):
            m = min(_TILE, n - lo)
            total[:] = 0.0
            # Trees are summed in order, as scikit-learn accumulates them, for equal rounding.
            for k in range(n_trees):
                base = np.uint64(k) * n_inner
                nodes[:] = 0
                for _ in range(depth):
                    for r in range(m):
                        j = base + nodes[r]
                        x = Xf[np.uint64((lo + r) * n_cols) + np.uint64(feature[j])]
                        go_left = x <= threshold[j]
                        if check_nan:  # loop-invariant: the compiler unswitches it
                            # NaN fails the comparison: right unless missing_left.
                            go_left = go_left | (np.isnan(x) & missing_left[j])
                        nodes[r] = nodes[r] + nodes[r] + one + np.uint64(not go_left)
                leaf = np.uint64(k) * (n_inner + one) - n_inner
                for r in range(m):
                    total[r] += leaf_value[leaf + nodes[r]]
            for r in range(m):
                if denom != 0.0:
                    out[lo + r] = -(2.0 ** (-total[r] / denom))
                else:
                    out[lo + r] = -0.5


def isolation_forest_score_samples(packed: PackedForest, X) -> np.ndarray:
    """``IsolationForest.score_samples(X)`` computed from a :class:`PackedForest`.

    Parameters
    ----------
    packed : PackedForest
        From :func:`pack_isolation_forest`.
    X : array-like of shape (n_samples, n_features)
        Rows to score; cast to float32 as scikit-learn does. NaN is allowed.

    Returns
    -------
    numpy.ndarray of float64, shape (n_samples,)
        The score (lower = more abnormal), equal to scikit-learn's within 1e-9.
    """
    name = "isolation_forest_score_samples"
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != packed.n_features:
        raise ValueError(
            f"{name}: X must be 2-D with {packed.n_features} columns (the features the "
            f"forest was fitted on), got shape {X.shape}; pass the same feature columns"
        )
    if X.dtype.kind not in "iufb":
        raise TypeError(f"{name}: X must be numeric, got dtype {X.dtype}; pass float columns")
    X = np.ascontiguousarray(X, dtype=np.float32)
    out = np.empty(X.shape[0], dtype=np.float64)
    if X.shape[0] == 0:
        return out
    c = float(average_path_length([packed.max_samples])[0])
    denom = (packed.tree_offsets.shape[0] - 1) * c
    if packed.heap_depth:
        _score_samples_heap(
            X.ravel(),
            X.shape[1],
            packed.heap_feature.ravel(),
            packed.heap_threshold.ravel(),
            packed.heap_missing_left.ravel(),
            packed.heap_leaf_value.ravel(),
            packed.heap_depth,
            denom,
            bool(np.isnan(X).any()),  # without NaN one comparison decides each node
            out,
        )
        return out
    _score_samples(
        X,
        packed.tree_offsets,
        packed.feature,
        packed.threshold,
        packed.left,
        packed.missing_left,
        packed.leaf_value,
        denom,
        out,
    )
    return out
