"""Device interleaving within a group: the signature of a cloned terminal."""

from __future__ import annotations

import numpy as np

from kernels._checks import as_int64, as_time, check_sorted, dense_codes, same_length
from kernels._jit import jit

#: Device code meaning "unknown": never a switch and never the previous device.
UNKNOWN_DEVICE = -1


@jit
def _device_interleaving(group, t, codes, window, k, switch, back_switch):
    n = group.shape[0]
    last = np.full(k, -1, dtype=np.int64)  # latest row with this device in the group
    before = np.full(k, -1, dtype=np.int64)  # latest row with a time < t[last]
    start = 0
    prev = -1  # previous row of the group with a known device
    cand_last = -1  # sightings of the current run's device before the run started
    cand_before = -1
    for i in range(n):
        if i > 0 and group[i] != group[i - 1]:
            for j in range(start, i):
                if codes[j] >= 0:
                    last[codes[j]] = -1
                    before[codes[j]] = -1
            start = i
            prev = -1
        c = codes[i]
        switch[i] = False
        back_switch[i] = False
        if c < 0:
            continue
        if prev >= 0 and codes[prev] != c:
            switch[i] = True
            # A new run of device c starts: its earlier sightings all precede the other
            # device, so they are the only candidates for "c .. other .. c".
            cand_last = last[c]
            cand_before = before[c]
        elif prev < 0:
            cand_last = -1
            cand_before = -1
        # The latest candidate strictly before t[i]; on a tie use the one before it.
        j = cand_last
        if j >= 0 and t[j] >= t[i]:
            j = cand_before
        if j >= 0 and t[j] > t[i] - window:
            back_switch[i] = True
        if last[c] >= 0 and t[i] > t[last[c]]:
            before[c] = last[c]
        last[c] = i
        prev = i


def device_interleaving(group, t, device, window_s) -> tuple[np.ndarray, np.ndarray]:
    """Device switches and back-switches (A .. B .. A) within each group.

    Parameters
    ----------
    group : array-like of int
        Group code per row (e.g. terminal index).
    t : array-like of int or float
        Seconds. Rows must be sorted by ``(group, t)``; otherwise a ValueError names the
        first row out of order. Ties are taken in row order.
    device : array-like of int
        Device code per row (e.g. SIM or hardware serial index); ``-1`` = unknown. Rows
        with an unknown device are never flagged and are skipped when looking back.
    window_s : int or float
        Look-back window in seconds, > 0.

    Returns
    -------
    switch : numpy.ndarray of bool
        The device differs from the previous known device of the group (False on the
        group's first known row).
    back_switch : numpy.ndarray of bool
        Row i's device was seen earlier in the group at a time in
        ``(t_i - window_s, t_i)`` and another known device appeared after that sighting
        and before row i: two devices interleaving on one terminal id.

    Examples
    --------
    >>> s, b = device_interleaving([0, 0, 0, 0], [0, 10, 20, 30], [5, 6, 5, -1], 60)
    >>> s.tolist(), b.tolist()
    ([False, True, True, False], [False, False, True, False])
    """
    name = "device_interleaving"
    g = as_int64(group, "group", name)
    tt, w = as_time(t, window_s, name)
    d = as_int64(device, "device", name)
    n = same_length(name, group=g, t=tt, device=d)
    switch = np.zeros(n, dtype=np.bool_)
    back_switch = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return switch, back_switch
    check_sorted(g, tt, name)
    codes, k = dense_codes(d, missing=True)
    if k:
        _device_interleaving(g, tt, codes, w, k, switch, back_switch)
    return switch, back_switch


@jit
def _previous_flagged(group, codes, flag, k, out):
    n = group.shape[0]
    last = np.full(k, -1, dtype=np.int64)  # latest flagged row of each sub-group
    start = 0
    for i in range(n):
        if i > 0 and group[i] != group[i - 1]:
            for j in range(start, i):
                last[codes[j]] = -1
            start = i
        c = codes[i]
        out[i] = last[c]
        if flag[i]:
            last[c] = i


def previous_flagged(group, sub, flag) -> np.ndarray:
    """Index of the latest earlier row of the same group and sub-group with ``flag`` set.

    "The previous located fix of the same device on this terminal": rows are in
    order within each group (e.g. sorted by terminal and time), the sub-group is
    e.g. the device serial's code.

    Parameters
    ----------
    group : array-like of int
        Group code per row, non-decreasing (a group's rows are contiguous); otherwise
        a ValueError names the first row out of order.
    sub : array-like of int
        Sub-group code per row; every value, ``-1`` included, is a sub-group.
    flag : array-like of bool
        Rows that can be pointed to.

    Returns
    -------
    numpy.ndarray of int64
        Row index, -1 when no earlier flagged row of the same group and sub-group exists.

    Examples
    --------
    >>> previous_flagged([0, 0, 0, 0, 1], [5, 6, 5, 5, 5], [True, True, False, True, True]).tolist()
    [-1, -1, 0, 0, -1]
    """
    name = "previous_flagged"
    g = as_int64(group, "group", name)
    s = as_int64(sub, "sub", name)
    f = np.asarray(flag)
    if f.ndim != 1 or (f.dtype.kind != "b" and f.size):
        raise TypeError(
            f"{name}: flag must be a 1-D boolean array, got dtype {f.dtype} and shape "
            f"{f.shape}; pass one True/False per row"
        )
    f = np.ascontiguousarray(f, dtype=np.bool_)
    n = same_length(name, group=g, sub=s, flag=f)
    out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out
    down = np.flatnonzero(g[1:] < g[:-1])
    if down.size:
        i = int(down[0]) + 1
        raise ValueError(
            f"{name}: group codes must be non-decreasing (a group's rows contiguous): row {i} "
            f"has group {g[i]} after group {g[i - 1]}; sort the rows by group first"
        )
    codes, k = dense_codes(s)
    _previous_flagged(g, codes, f, k, out)
    return out
