"""kernels.stan_chains against a slow pure-Python reference, plus the domain cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels.stan_chains import stan_chains
from tests.kernels.strategies import sorted_rows

# Values near each other, far apart and around the wrap-around point.
STANS = st.sampled_from([-1, 0, 1, 2, 3, 5, 8, 500, 501, 502, 999_998, 999_999])


def reference_stan_chains(group, stan, max_gap, min_len):
    """Row-by-row restatement of the docstring, one group at a time (slow, obvious)."""
    n = len(group)
    chain, back = [-1] * n, [False] * n
    i = 0
    while i < n:
        j = i
        while j < n and group[j] == group[i]:
            j += 1
        lasts: list[int] = []
        sizes: list[int] = []
        cur = None
        for r in range(i, j):
            s = int(stan[r])
            if s < 0:
                continue
            steps = [((s - last) % 1_000_000, c) for c, last in enumerate(lasts)]
            fits = [(d, c) for d, c in steps if d <= max_gap]
            if cur is not None and any(c == cur for _, c in fits):
                c = cur
                lasts[c] = s
                sizes[c] += 1
            elif fits:
                c = min(fits)[1]
                lasts[c] = s
                sizes[c] += 1
            else:
                c = len(lasts)
                lasts.append(s)
                sizes.append(1)
            chain[r] = c
            cur = c
        kept = [r for r in range(i, j) if chain[r] >= 0 and sizes[chain[r]] >= min_len]
        for pos, r in enumerate(kept):
            earlier = {chain[q] for q in kept[:pos]}
            back[r] = pos > 0 and chain[r] != chain[kept[pos - 1]] and chain[r] in earlier
        i = j
    return np.array(chain, dtype=np.int64), np.array(back, dtype=bool)


@st.composite
def rows_with_stan(draw):
    group, t = draw(sorted_rows())
    stan = draw(hnp.arrays(np.int64, len(group), elements=STANS))
    return group, t, stan, draw(st.integers(0, 600)), draw(st.integers(1, 3))


@settings(max_examples=120, deadline=None)
@given(rows_with_stan())
def test_matches_reference(rows):
    group, t, stan, max_gap, min_len = rows
    chain, back = stan_chains(group, t, stan, max_gap, min_len)
    want_chain, want_back = reference_stan_chains(group, stan, max_gap, min_len)
    np.testing.assert_array_equal(chain, want_chain)
    np.testing.assert_array_equal(back, want_back)


def test_two_interleaved_counters_return():
    # A clone: two devices' counters (505xxx and 715xxx) alternate on one terminal id.
    stan = [505001, 505002, 715001, 505003, 715002, 715003, 505004]
    chain, back = stan_chains([0] * 7, range(7), stan, 100)
    assert chain.tolist() == [0, 0, 1, 0, 1, 1, 0]
    assert back.sum() == 3


def test_reset_after_reboot_and_wrap_are_one_device():
    # reboot: the counter restarts at 1 and never goes back to the old values
    _, back = stan_chains([0] * 6, range(6), [500, 501, 502, 1, 2, 3], 100)
    assert not back.any()
    # wrap-around 999999 -> 0 continues the same chain
    chain, back = stan_chains([0] * 4, range(4), [999_998, 999_999, 0, 1], 100)
    assert chain.tolist() == [0, 0, 0, 0] and not back.any()
    # a retransmission (same STAN) and a missing STAN do not start a chain
    chain, back = stan_chains([0] * 4, range(4), [7, 7, -1, 8], 100)
    assert chain.tolist() == [0, 0, -1, 0] and not back.any()


def test_single_late_message_is_not_a_second_counter():
    # one store-and-forward message with an older STAN arrives late
    _, back = stan_chains([0] * 5, range(5), [100, 101, 5, 102, 103], 50)
    assert not back.any()  # min_len=2: a one-row chain is ignored
    _, back = stan_chains([0] * 5, range(5), [100, 101, 5, 102, 103], 50, min_len=1)
    assert back.sum() == 1


def test_previous_chain_wins_after_a_reset_near_the_old_counter():
    # the old counter stopped at 3; after a reboot the new one runs 1, 2, 3, 4: the
    # repeated 3 continues the new counter, not the old one
    chain, back = stan_chains([0] * 7, range(7), [1, 2, 3, 1, 2, 3, 4], 1000)
    assert chain.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert not back.any()


def test_groups_are_independent():
    chain, back = stan_chains([0, 0, 1, 1], [0, 1, 0, 1], [10, 900_000, 900_001, 11], 100)
    assert chain.tolist() == [0, 1, 0, 1]
    assert not back.any()


def test_validation():
    c, b = stan_chains([], [], [], 10)
    assert c.shape == b.shape == (0,)
    with pytest.raises(ValueError, match=r"row 1 .*sort by \[group, t\]"):
        stan_chains([0, 0], [2, 1], [1, 2], 10)
    with pytest.raises(ValueError, match="expected 0..999999"):
        stan_chains([0], [0], [1_000_000], 10)
    with pytest.raises(ValueError, match="max_gap >= 0"):
        stan_chains([0], [0], [1], -1)
    with pytest.raises(TypeError, match="integer codes"):
        stan_chains([0], [0], [1.5], 10)
