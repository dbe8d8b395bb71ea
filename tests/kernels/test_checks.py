"""kernels._checks: dtypes, time handling and dense codes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels._checks import as_time, check_sorted, dense_codes


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.int64, st.integers(0, 30), elements=st.integers(-(2**62), 2**62)),
    st.booleans(),
)
def test_dense_codes_preserve_equality(values, missing):
    codes, k = dense_codes(values, missing=missing)
    assert codes.dtype == np.int64
    known = values != -1 if missing else np.ones(values.shape, bool)
    assert (codes[~known] == -1).all()
    assert ((codes[known] >= 0) & (codes[known] < k)).all()
    # same value <-> same code
    eq_values = values[known][:, None] == values[known][None, :]
    eq_codes = codes[known][:, None] == codes[known][None, :]
    np.testing.assert_array_equal(eq_values, eq_codes)


def test_time_dtypes():
    t, w = as_time(np.array([1, 2], np.int32), 60, "k")
    assert t.dtype == np.int64 and isinstance(w, np.int64)
    t, w = as_time(np.array([1, 2]), 1.5, "k")
    assert t.dtype == np.float64 and w == 1.5
    with pytest.raises(ValueError, match="positive"):
        as_time([1], -1, "k")


def test_check_sorted_names_the_row():
    check_sorted(np.array([0, 0, 1]), np.array([5, 5, 0]), "k")
    with pytest.raises(ValueError, match=r"k: .*row 2 \(group 0, t 1\)"):
        check_sorted(np.array([0, 0, 0]), np.array([5, 5, 1]), "k")


def _first_seen_reference(values: np.ndarray, missing: bool) -> tuple[np.ndarray, int]:
    """Slow obvious reference: a dict from value to code, codes in order of first appearance."""
    seen: dict[int, int] = {}
    out = []
    for v in values.tolist():
        if missing and v == -1:
            out.append(-1)
        else:
            out.append(seen.setdefault(v, len(seen)))
    return np.array(out, dtype=np.int64), len(seen)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=12),
    st.lists(st.integers(0, 11), min_size=0, max_size=400),
    st.booleans(),
)
def test_wide_dense_codes_equal_the_first_seen_reference(pool, picks, missing):
    # Wide values (hash table path) drawn from a small pool: many repeats, extremes of
    # int64 included, and -1 as missing when ``missing``.
    values = np.array([pool[i % len(pool)] for i in picks] + [2**62, -(2**62)], dtype=np.int64)
    codes, k = dense_codes(values, missing=missing)
    want, want_k = _first_seen_reference(values, missing)
    np.testing.assert_array_equal(codes, want)
    assert k == want_k


def test_wide_dense_codes_on_many_rows_equal_a_sort_based_coding():
    rng = np.random.default_rng(3)
    values = rng.integers(-(2**63), 2**63 - 1, 50_000, dtype=np.int64)
    values = values[rng.integers(0, 50_000, 200_000)]  # repeats: ~43k distinct of 200k rows
    codes, k = dense_codes(values)
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    np.testing.assert_array_equal(codes, rank[inverse])
    assert k == first.size
