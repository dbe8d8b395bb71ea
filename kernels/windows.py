"""Sliding time windows per group: row counts, distinct values, repeats of a value.

Every window here is the set of rows of the same group whose time lies in
``(t_i - window_s, t_i]``. Rows tied with ``t_i`` belong to it whatever their
position, so the results do not depend on the order of tied rows (as polars
``rolling(closed="right")``).
"""

from __future__ import annotations

import numpy as np

from kernels._checks import as_int64, as_time, check_sorted, dense_codes, same_length
from kernels._jit import jit


@jit
def _window_count(group, t, window, out):
    n = group.shape[0]
    left = 0
    right = -1  # last row inside the window
    for i in range(n):
        if i > 0 and group[i] != group[i - 1]:
            left = i
        if right < i:
            right = i
            while right + 1 < n and group[right + 1] == group[i] and t[right + 1] == t[i]:
                right += 1
        while t[left] <= t[i] - window:
            left += 1
        out[i] = right - left + 1


@jit
def _window_value_counts(group, t, codes, window, k, mode, out):
    # mode 0: distinct values in the window; mode 1: rows with the row's own value.
    n = group.shape[0]
    counts = np.zeros(k, dtype=np.int64)
    distinct = 0
    left = 0
    right = -1
    for i in range(n):
        if i > 0 and group[i] != group[i - 1]:
            # Empty the previous group's window so the counts start at zero again.
            for j in range(left, right + 1):
                counts[codes[j]] -= 1
            distinct = 0
            left = i
            right = i - 1
        while right + 1 < n and group[right + 1] == group[i] and t[right + 1] <= t[i]:
            right += 1
            c = codes[right]
            if counts[c] == 0:
                distinct += 1
            counts[c] += 1
        while t[left] <= t[i] - window:
            c = codes[left]
            counts[c] -= 1
            if counts[c] == 0:
                distinct -= 1
            left += 1
        out[i] = distinct if mode == 0 else counts[codes[i]]


def _prepare(group, t, window_s, name, **others):
    g = as_int64(group, "group", name)
    tt, w = as_time(t, window_s, name)
    arrays = {k: as_int64(v, k, name) for k, v in others.items()}
    n = same_length(name, group=g, t=tt, **arrays)
    if n:
        check_sorted(g, tt, name)
    return g, tt, w, arrays, n


def window_count(group, t, window_s) -> np.ndarray:
    """Number of rows of the same group with time in ``(t_i - window_s, t_i]``.

    Parameters
    ----------
    group : array-like of int
        Group code per row (e.g. terminal index).
    t : array-like of int or float
        Seconds. Integer times with an integral window are compared exactly as int64;
        otherwise both are float64. Rows must be sorted by ``(group, t)``; otherwise a
        ValueError names the first row out of order.
    window_s : int or float
        Window length in seconds, > 0.

    Returns
    -------
    numpy.ndarray of int64
        The count, including the row itself and rows tied with it.

    Examples
    --------
    >>> window_count([0, 0, 0, 1], [0, 30, 60, 90], 60)
    array([1, 2, 2, 1])
    """
    g, tt, w, _, n = _prepare(group, t, window_s, "window_count")
    out = np.empty(n, dtype=np.int64)
    if n:
        _window_count(g, tt, w, out)
    return out


def _value_counts(group, t, values, window_s, name, mode):
    g, tt, w, arrays, n = _prepare(group, t, window_s, name, values=values)
    out = np.empty(n, dtype=np.int64)
    if n:
        codes, k = dense_codes(arrays["values"])
        _window_value_counts(g, tt, codes, w, k, mode, out)
    return out


def window_distinct(group, t, values, window_s) -> np.ndarray:
    """Number of distinct ``values`` among rows of the same group in ``(t_i - window_s, t_i]``.

    Parameters
    ----------
    group : array-like of int
        Group code per row (e.g. terminal index).
    t : array-like of int or float
        Seconds, sorted within each group (rows sorted by ``(group, t)``).
    values : array-like of int
        Codes to count (e.g. card index); every value, including negatives, is a value.
    window_s : int or float
        Window length in seconds, > 0.

    Returns
    -------
    numpy.ndarray of int64
        Distinct values in the window, the row's own value included.

    Examples
    --------
    >>> window_distinct([0, 0, 0, 0], [0, 10, 20, 200], [7, 8, 7, 8], 60)
    array([1, 2, 2, 1])
    """
    return _value_counts(group, t, values, window_s, "window_distinct", 0)


def same_value_recent(group, t, values, window_s) -> np.ndarray:
    """Rows of the same group in ``(t_i - window_s, t_i]`` whose value equals row i's.

    "Same card within minutes" and split sales: a value of 3 means the card was used
    three times in the window (this row included).

    Parameters
    ----------
    group : array-like of int
        Group code per row (e.g. terminal index).
    t : array-like of int or float
        Seconds, sorted within each group (rows sorted by ``(group, t)``).
    values : array-like of int
        Codes compared for equality (e.g. card index).
    window_s : int or float
        Window length in seconds, > 0.

    Returns
    -------
    numpy.ndarray of int64
        The count, including the row itself and rows tied with it in time.

    Examples
    --------
    >>> same_value_recent([0, 0, 0, 0], [0, 10, 20, 200], [7, 8, 7, 7], 60)
    array([1, 1, 2, 1])
    """
    return _value_counts(group, t, values, window_s, "same_value_recent", 1)
