"""kernels.stan against tests/kernels/reference.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels.stan import stan_checks
from tests.kernels import reference as ref
from tests.kernels.strategies import sorted_rows, windows

# Small STANs plus values around the wrap-around point.
STANS = st.sampled_from([-1, 0, 1, 2, 3, 500, 999, 1000, 998_999, 999_000, 999_999])


@st.composite
def rows_with_stan(draw):
    group, t = draw(sorted_rows())
    stan = draw(hnp.arrays(np.int64, len(group), elements=STANS))
    return group, t, stan, draw(windows)


@settings(max_examples=80, deadline=None)
@given(rows_with_stan())
def test_matches_reference(rows):
    group, t, stan, window = rows
    dup, ooo = stan_checks(group, t, stan, window)
    want_dup, want_ooo = ref.stan_checks(group, t, stan, window)
    np.testing.assert_array_equal(dup, want_dup)
    np.testing.assert_array_equal(ooo, want_ooo)


def test_wrap_around_and_missing():
    dup, ooo = stan_checks([0] * 5, [0, 1, 2, 3, 4], [999_000, 5, -1, 3, 998_999], 60)
    assert ooo.tolist() == [False, False, False, True, False]
    assert not dup.any()
    # a drop from below 999000 is not a wrap-around
    _, ooo = stan_checks([0, 0], [0, 1], [998_999, 5], 60)
    assert ooo.tolist() == [False, True]


def test_duplicate_only_within_window_and_group():
    dup, _ = stan_checks([0, 0, 0, 1], [0, 30, 100, 100], [7, 7, 7, 7], 60)
    assert dup.tolist() == [False, True, False, False]


def test_empty_single_and_unsorted():
    d, o = stan_checks([], [], [], 60)
    assert d.shape == o.shape == (0,)
    d, o = stan_checks([1], [1], [5], 60)
    assert not d.any() and not o.any()
    with pytest.raises(ValueError, match=r"row 1 .*sort by \[group, t\]"):
        stan_checks([0, 0], [2, 1], [1, 2], 60)
