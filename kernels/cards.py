"""Card-testing bursts: cards of one BIN with nearby last-4 digits on one terminal."""

from __future__ import annotations

import numbers

import numpy as np

from kernels._checks import as_int64, as_time, check_sorted, dense_codes, same_length
from kernels._jit import jit

#: ``bin_code`` or ``last4`` equal to this means missing: the row is not counted.
MISSING = -1
_LAST4_SPAN = 10_000
_EMPTY = -1
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing


@jit
def _slot(keys, key, shift):
    # Open addressing with linear probing; the table holds at least twice the keys of a group.
    mask = keys.shape[0] - 1
    h = np.int64((np.uint64(key) * _HASH_MULT) >> np.uint64(shift))
    while keys[h] != _EMPTY and keys[h] != key:
        h = (h + 1) & mask
    return h


@jit
def _sequential_card_burst(group, t, bin_code, last4, window, max_gap, size_bits, out):
    n = group.shape[0]
    shift = 64 - size_bits
    keys = np.full(1 << size_bits, _EMPTY, dtype=np.int64)
    counts = np.zeros(1 << size_bits, dtype=np.int64)
    used = np.empty(1 << size_bits, dtype=np.int64)  # occupied slots, to clear per group
    n_used = 0
    left = 0
    right = -1
    for i in range(n):
        if i > 0 and group[i] != group[i - 1]:
            for u in range(n_used):
                keys[used[u]] = _EMPTY
                counts[used[u]] = 0
            n_used = 0
            left = i
            right = i - 1
        while right + 1 < n and group[right + 1] == group[i] and t[right + 1] <= t[i]:
            right += 1
            if last4[right] >= 0:
                key = bin_code[right] * _LAST4_SPAN + last4[right]
                h = _slot(keys, key, shift)
                if keys[h] == _EMPTY:
                    keys[h] = key
                    used[n_used] = h
                    n_used += 1
                counts[h] += 1
        while t[left] <= t[i] - window:
            if last4[left] >= 0:
                counts[_slot(keys, bin_code[left] * _LAST4_SPAN + last4[left], shift)] -= 1
            left += 1
        out[i] = 0
        if last4[i] < 0:
            continue
        base = bin_code[i] * _LAST4_SPAN
        lo = max(last4[i] - max_gap, 0)
        hi = min(last4[i] + max_gap, _LAST4_SPAN - 1)
        found = 0
        for v in range(lo, hi + 1):
            if v != last4[i] and counts[_slot(keys, base + v, shift)] > 0:
                found += 1
        out[i] = found


def sequential_card_burst(group, t, bin_code, last4, window_s, max_gap) -> np.ndarray:
    """Other cards of the same BIN with nearby last-4 digits seen in the window.

    Card testing runs through sequential card numbers on one terminal: for each row,
    count the distinct ``last4`` values ``v`` with ``1 <= |v - last4_i| <= max_gap``
    among rows of the same group and ``bin_code`` with time in ``(t_i - window_s, t_i]``.

    Parameters
    ----------
    group : array-like of int
        Group code per row (e.g. terminal index).
    t : array-like of int or float
        Seconds. Rows must be sorted by ``(group, t)``; otherwise a ValueError names the
        first row out of order. Rows tied with ``t_i`` are in the window.
    bin_code : array-like of int
        BIN (first 6 digits) or its code; ``-1`` = missing (row not counted, result 0).
    last4 : array-like of int
        Last four digits as an integer 0..9999; ``-1`` = missing (row not counted,
        result 0).
    window_s : int or float
        Window length in seconds, > 0.
    max_gap : int
        Largest difference of last-4 digits that counts as sequential, >= 1.

    Returns
    -------
    numpy.ndarray of int64
        The number of such other last-4 values (0 when none).

    Examples
    --------
    >>> sequential_card_burst([0] * 4, [0, 5, 9, 9], [4] * 4, [1000, 1001, 1003, 1001], 60, 2)
    array([0, 1, 1, 2])
    """
    name = "sequential_card_burst"
    g = as_int64(group, "group", name)
    tt, w = as_time(t, window_s, name)
    b = as_int64(bin_code, "bin_code", name)
    l4 = as_int64(last4, "last4", name)
    n = same_length(name, group=g, t=tt, bin_code=b, last4=l4)
    if not isinstance(max_gap, numbers.Integral) or isinstance(max_gap, bool) or max_gap < 1:
        raise ValueError(
            f"{name}: max_gap must be an integer >= 1 (largest last-4 difference that "
            f"counts as sequential), got {max_gap!r}"
        )
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    bad = (l4 < MISSING) | (l4 >= _LAST4_SPAN)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: last4 must be the last four digits as an integer 0..9999 or -1 for "
            f"missing, got {l4[row]} at row {row}; pass int(card_last4) or -1"
        )
    check_sorted(g, tt, name)
    codes, _ = dense_codes(b, missing=True)
    l4 = np.where(codes < 0, MISSING, l4)
    bounds = np.flatnonzero(np.diff(g)) + 1
    longest = int(np.diff(np.concatenate(([0], bounds, [n]))).max())
    size_bits = max(4, int(np.ceil(np.log2(2 * longest))))
    _sequential_card_burst(g, tt, codes, l4, w, int(max_gap), size_bits, out)
    return out
