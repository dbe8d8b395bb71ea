"""kernels.devices against tests/kernels/reference.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.devices import device_interleaving, previous_flagged
from tests.kernels import reference as ref
from tests.kernels.strategies import codes, scale, sorted_rows, windows


@st.composite
def rows_with_devices(draw):
    group, t = draw(sorted_rows())
    device, factor = draw(codes(len(group), 0, 2, missing=True))
    return group, t, scale(device, factor), draw(windows)


@settings(max_examples=80, deadline=None)
@given(rows_with_devices())
def test_matches_reference(rows):
    group, t, device, window = rows
    switch, back = device_interleaving(group, t, device, window)
    want_switch, want_back = ref.device_interleaving(group, t, device, window)
    assert switch.dtype == np.bool_ and back.dtype == np.bool_
    np.testing.assert_array_equal(switch, want_switch)
    np.testing.assert_array_equal(back, want_back)


def test_clone_pattern():
    # A B A within the window, unknown devices skipped; then A again after the window.
    group = [0] * 6
    t = [0, 10, 15, 20, 30, 500]
    device = [1, -1, 2, 1, 1, 1]
    switch, back = device_interleaving(group, t, device, 60)
    assert switch.tolist() == [False, False, True, True, False, False]
    assert back.tolist() == [False, False, False, True, True, False]


def test_same_time_sighting_is_not_in_the_open_window():
    # the earlier sighting must be strictly before t_i
    _, back = device_interleaving([0, 0, 0], [5, 5, 5], [1, 2, 1], 60)
    assert back.tolist() == [False, False, False]
    _, back = device_interleaving([0, 0, 0, 0], [4, 5, 5, 5], [1, 1, 2, 1], 60)
    assert back.tolist() == [False, False, False, True]


def test_groups_do_not_leak():
    switch, back = device_interleaving([0, 0, 1, 1], [0, 1, 2, 3], [1, 2, 1, 1], 60)
    assert switch.tolist() == [False, True, False, False]
    assert not back.any()


def test_empty_single_unknown_and_unsorted():
    s, b = device_interleaving([], [], [], 60)
    assert s.shape == b.shape == (0,)
    s, b = device_interleaving([0, 0], [1, 2], [-1, -1], 60)
    assert not s.any() and not b.any()
    with pytest.raises(ValueError, match=r"row 2 .*sort by \[group, t\]"):
        device_interleaving([0, 0, 0], [1, 3, 2], [1, 2, 1], 60)
    with pytest.raises(ValueError, match="lengths"):
        device_interleaving([0, 0], [1, 2], [1], 60)


@settings(max_examples=60, deadline=None)
@given(rows_with_devices(), st.randoms(use_true_random=False))
def test_previous_flagged_matches_a_scan(rows, rnd):
    group, _, device, _ = rows
    flag = np.array([rnd.random() < 0.6 for _ in group], dtype=np.bool_)
    got = previous_flagged(group, device, flag)
    want = [
        max(
            (j for j in range(i) if group[j] == group[i] and device[j] == device[i] and flag[j]),
            default=-1,
        )
        for i in range(len(group))
    ]
    assert got.tolist() == want


def test_previous_flagged_rejects_unsorted_groups_and_non_boolean_flags():
    with pytest.raises(ValueError, match="row 2 has group 0 after group 1"):
        previous_flagged([0, 1, 0], [1, 1, 1], np.array([True, True, True]))
    with pytest.raises(TypeError, match="flag must be a 1-D boolean array"):
        previous_flagged([0, 0], [1, 1], [1, 0])
