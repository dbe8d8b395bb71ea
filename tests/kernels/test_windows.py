"""kernels.windows against tests/kernels/reference.py (and polars rolling as an oracle)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels.windows import same_value_recent, window_count, window_distinct
from tests.kernels import reference as ref
from tests.kernels.strategies import codes, scale, sorted_rows, windows


@st.composite
def rows_with_values(draw):
    group, t = draw(sorted_rows())
    values, factor = draw(codes(len(group), -3, 4))
    return group, t, scale(values, factor), draw(windows)


@settings(max_examples=60, deadline=None)
@given(sorted_rows(), windows)
def test_window_count_matches_reference(rows, window):
    group, t = rows
    got = window_count(group, t, window)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref.window_count(group, t, window))


@settings(max_examples=60, deadline=None)
@given(rows_with_values())
def test_window_distinct_matches_reference(rows):
    group, t, values, window = rows
    got = window_distinct(group, t, values, window)
    np.testing.assert_array_equal(got, ref.window_distinct(group, t, values, window))


@settings(max_examples=60, deadline=None)
@given(rows_with_values())
def test_same_value_recent_matches_reference(rows):
    group, t, values, window = rows
    got = same_value_recent(group, t, values, window)
    np.testing.assert_array_equal(got, ref.same_value_recent(group, t, values, window))


@settings(max_examples=30, deadline=None)
@given(sorted_rows(float_t=False), st.integers(1, 40))
def test_window_count_equals_polars_rolling(rows, window):
    group, t = rows
    frame = pl.DataFrame({"g": group, "t": t})
    want = frame.rolling("t", period=f"{window}i", closed="right", group_by="g").agg(pl.len())
    np.testing.assert_array_equal(window_count(group, t, window), want["len"].to_numpy())


def test_int_and_float_times_agree():
    group = np.array([0, 0, 0, 1, 1])
    t = np.array([0, 10, 20, 20, 25])
    for fn, args in (
        (window_count, ()),
        (window_distinct, (np.array([1, 2, 1, 1, 1]),)),
        (same_value_recent, (np.array([1, 2, 1, 1, 1]),)),
    ):
        a = fn(group, t, *args, 15)
        np.testing.assert_array_equal(a, fn(group, t.astype(float), *args, 15.0))
        np.testing.assert_array_equal(a, fn(group, t, *args, 15.0))


def test_ties_do_not_depend_on_row_order():
    # both rows at t=5 are in each other's window
    np.testing.assert_array_equal(window_count([0, 0, 0], [1, 5, 5], 2), [1, 2, 2])
    np.testing.assert_array_equal(same_value_recent([0, 0, 0], [5, 5, 5], [4, 4, 9], 1), [2, 2, 1])


@pytest.mark.parametrize("fn", [window_count, window_distinct, same_value_recent])
def test_empty_single_and_unsorted(fn):
    extra = () if fn is window_count else ([7],)
    assert fn([], [], *([[]] if extra else []), 60).shape == (0,)
    np.testing.assert_array_equal(fn([3], [100], *extra, 60), [1])
    extra2 = () if fn is window_count else ([7, 7],)
    with pytest.raises(ValueError, match=r"row 1 .*sort by \[group, t\]"):
        fn([0, 0], [9, 1], *extra2, 60)


def test_wrapper_errors():
    with pytest.raises(ValueError, match="window_s must be a positive"):
        window_count([0], [1], 0)
    with pytest.raises(ValueError, match="window_s must be a positive"):
        window_count([0], [1], float("nan"))
    with pytest.raises(ValueError, match="lengths"):
        window_distinct([0, 0], [1, 2], [1], 5)
    with pytest.raises(TypeError, match="integer codes"):
        same_value_recent([0], [1], ["card"], 5)
    with pytest.raises(TypeError, match="seconds"):
        window_count([0], np.array(["2024-01-01"], dtype="datetime64[s]"), 5)


@settings(max_examples=20, deadline=None)
@given(hnp.arrays(np.int64, 30, elements=st.integers(0, 5)))
def test_distinct_never_exceeds_count(values):
    group = np.zeros(30, np.int64)
    t = np.arange(30) // 3
    assert (window_distinct(group, t, values, 4) <= window_count(group, t, 4)).all()
