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
