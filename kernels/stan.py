"""STAN (system trace audit number) checks: duplicates and numbers going backwards."""

from __future__ import annotations

import numpy as np

from kernels._checks import as_int64, as_time, check_sorted, dense_codes, same_length
from kernels._jit import jit

#: STAN code meaning "missing": never flagged and never the previous STAN.
MISSING_STAN = -1
#: A drop from at least this value ...
WRAP_FROM = 999_000
#: ... to below this value is the 6-digit counter wrapping round, not a step back.
WRAP_TO = 1_000


@jit
def _stan_checks(group, t, stan, codes, window, k, duplicate, out_of_order):
    n = group.shape[0]
    last = np.full(k, -1, dtype=np.int64)  # latest earlier row with this STAN in the group
    start = 0
    prev = -1  # previous row of the group with a STAN
    for i in range(n):
        if i > 0 and group[i] != group[i - 1]:
            for j in range(start, i):
                if codes[j] >= 0:
                    last[codes[j]] = -1
            start = i
            prev = -1
        duplicate[i] = False
        out_of_order[i] = False
        c = codes[i]
        if c < 0:
            continue
        j = last[c]
        if j >= 0 and t[j] > t[i] - window:
            duplicate[i] = True
        if prev >= 0 and stan[i] < stan[prev]:
            wrapped = stan[prev] >= WRAP_FROM and stan[i] < WRAP_TO
            out_of_order[i] = not wrapped
        last[c] = i
        prev = i


def stan_checks(group, t, stan, window_s) -> tuple[np.ndarray, np.ndarray]:
    """Duplicate and out-of-order STANs within each group.

    Parameters
    ----------
    group : array-like of int
        Group code per row (e.g. terminal index).
    t : array-like of int or float
        Seconds. Rows must be sorted by ``(group, t)``; otherwise a ValueError names the
        first row out of order. Tied rows are taken in row order.
    stan : array-like of int
        STAN per row (0..999999); ``-1`` = missing: never flagged, skipped as previous.
    window_s : int or float
        Window in seconds for duplicates, > 0.

    Returns
    -------
    duplicate : numpy.ndarray of bool
        The same STAN occurred in an earlier row of the group with a time in
        ``(t_i - window_s, t_i]`` (the first occurrence is not a duplicate).
    out_of_order : numpy.ndarray of bool
        The STAN is lower than the previous non-missing STAN of the group, except the
        counter wrapping round: previous >= 999000 and current < 1000 is not flagged.

    Examples
    --------
    >>> d, o = stan_checks([0, 0, 0, 0], [0, 1, 2, 3], [999500, 12, 12, 5], 60)
    >>> d.tolist(), o.tolist()
    ([False, False, True, False], [False, False, False, True])
    """
    name = "stan_checks"
    g = as_int64(group, "group", name)
    tt, w = as_time(t, window_s, name)
    s = as_int64(stan, "stan", name)
    n = same_length(name, group=g, t=tt, stan=s)
    duplicate = np.zeros(n, dtype=np.bool_)
    out_of_order = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return duplicate, out_of_order
    check_sorted(g, tt, name)
    codes, k = dense_codes(s, missing=True)
    if k:
        _stan_checks(g, tt, s, codes, w, k, duplicate, out_of_order)
    return duplicate, out_of_order
