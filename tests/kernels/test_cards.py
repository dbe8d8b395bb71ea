"""kernels.cards against tests/kernels/reference.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels.cards import sequential_card_burst
from tests.kernels import reference as ref
from tests.kernels.strategies import codes, scale, sorted_rows, windows


@st.composite
def rows_with_cards(draw):
    group, t = draw(sorted_rows())
    bins, factor = draw(codes(len(group), 0, 2, missing=True))
    # last4 around 0, the middle and 9999, so the 0..9999 edges are crossed
    last4 = draw(
        hnp.arrays(
            np.int64,
            len(group),
            elements=st.sampled_from([-1, 0, 1, 2, 4, 5000, 5001, 5003, 9997, 9998, 9999]),
        )
    )
    return group, t, scale(bins, factor), last4, draw(windows), draw(st.integers(1, 3))


@settings(max_examples=80, deadline=None)
@given(rows_with_cards())
def test_matches_reference(rows):
    group, t, bins, last4, window, gap = rows
    got = sequential_card_burst(group, t, bins, last4, window, gap)
    np.testing.assert_array_equal(
        got, ref.sequential_card_burst(group, t, bins, last4, window, gap)
    )


def test_burst_counts_distinct_neighbours_of_the_same_bin():
    group = [0] * 6
    t = [0, 1, 2, 3, 4, 5]
    bins = [411111, 411111, 411111, 522222, 411111, 411111]
    last4 = [1000, 1001, 1001, 1002, 1002, 1000]
    got = sequential_card_burst(group, t, bins, last4, 60, 2)
    # row 5 (1000): 1001 and 1002 of bin 411111; 1002 of bin 522222 does not count
    assert got.tolist() == [0, 1, 1, 0, 2, 2]


def test_large_group_and_many_keys():
    # more distinct keys than the smallest hash table, in one group
    rng = np.random.default_rng(7)
    n = 300
    t = np.sort(rng.integers(0, 50, n))
    bins = rng.integers(0, 4, n)
    last4 = rng.integers(0, 40, n)
    got = sequential_card_burst(np.zeros(n, np.int64), t, bins, last4, 10, 2)
    np.testing.assert_array_equal(
        got, ref.sequential_card_burst(np.zeros(n), t, bins, last4, 10, 2)
    )


def test_empty_single_and_errors():
    assert sequential_card_burst([], [], [], [], 60, 1).shape == (0,)
    assert sequential_card_burst([0], [0], [4], [1], 60, 1).tolist() == [0]
    with pytest.raises(ValueError, match=r"row 1 .*sort by \[group, t\]"):
        sequential_card_burst([0, 0], [2, 1], [4, 4], [1, 2], 60, 1)
    with pytest.raises(ValueError, match="0..9999"):
        sequential_card_burst([0], [0], [4], [12345], 60, 1)
    with pytest.raises(ValueError, match="max_gap"):
        sequential_card_burst([0], [0], [4], [1], 60, 0)
