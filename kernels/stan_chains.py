"""STAN chains: how many trace-number counters one terminal id is using at once.

One device has one STAN counter (ISO 8583 DE11, domain.md §4.1 "clone detection
(monotonic per TID)"). Rows of one terminal, in time order, are split greedily into
*chains*: a row *fits* a chain whose last STAN is at most ``max_gap`` below its own
(modulo 1 000 000, so the counter wrapping round from 999999 to 0 continues a chain;
an equal STAN, a retransmission, fits too). A row continues the previous row's chain
when it fits it, else the fitting chain with the smallest step (the earliest chain on
a tie); a row that fits no chain starts a new one. A device that resets its counter after a reboot
starts a new chain and never returns to the old one; two devices interleave their
chains. A *return* is a row whose chain differs from the previous row's and was seen
earlier in the group: A, B, A is one return, A, B, A, B two.
"""

from __future__ import annotations

import numpy as np

from kernels._checks import as_int64, as_time, check_sorted, same_length
from kernels._jit import jit

#: STAN code meaning "missing": never in a chain.
MISSING_STAN = -1
#: The STAN counter's modulus (6 digits).
STAN_MODULUS = 1_000_000


@jit
def _stan_chains(group, stan, max_gap, min_len, chain, back):
    n = group.shape[0]
    last = np.empty(n, dtype=np.int64)  # last STAN of each chain of the current group
    size = np.zeros(n, dtype=np.int64)
    seen = np.zeros(n, dtype=np.bool_)
    start = 0
    while start < n:
        end = start + 1
        while end < n and group[end] == group[start]:
            end += 1
        k = 0
        cur = -1  # chain of the previous row with a STAN
        for i in range(start, end):
            back[i] = False
            chain[i] = -1
            s = stan[i]
            if s < 0:
                continue
            best = -1
            best_d = max_gap + 1
            if cur >= 0 and (s - last[cur]) % STAN_MODULUS <= max_gap:
                best = cur
            else:
                for c in range(k):
                    d = (s - last[c]) % STAN_MODULUS
                    if d <= max_gap and d < best_d:
                        best = c
                        best_d = d
            if best < 0:
                best = k
                size[k] = 0
                seen[k] = False
                k += 1
            last[best] = s
            size[best] += 1
            chain[i] = best
            cur = best
        prev = -1
        for i in range(start, end):
            c = chain[i]
            if c < 0 or size[c] < min_len:
                continue
            if prev >= 0 and c != prev and seen[c]:
                back[i] = True
            seen[c] = True
            prev = c
        start = end


def stan_chains(group, t, stan, max_gap, min_len=2) -> tuple[np.ndarray, np.ndarray]:
    """Split each group's STANs into counters (chains) and flag returns to an earlier one.

    Parameters
    ----------
    group : array-like of int
        Group code per row (e.g. terminal index).
    t : array-like of int or float
        Seconds; rows must be sorted by ``(group, t)`` (a ValueError names the first row
        out of order). Only the order is used.
    stan : array-like of int
        STAN per row (0..999999); ``-1`` = missing (never in a chain).
    max_gap : int
        Largest forward step (modulo 1 000 000) that continues a chain, >= 0.
    min_len : int
        Chains with fewer rows are ignored for returns (a single late message is not a
        second device), >= 1.

    Returns
    -------
    chain : numpy.ndarray of int64
        Chain index within the group, in order of first appearance (-1: missing STAN).
    back : numpy.ndarray of bool
        The row's chain has ``min_len`` rows or more, differs from the chain of the
        previous such row and appeared earlier in the group: a return to an earlier
        counter.

    Examples
    --------
    >>> c, b = stan_chains([0] * 6, range(6), [505001, 715001, 505002, 715002, 1, 2], 100)
    >>> c.tolist(), b.tolist()
    ([0, 1, 0, 1, 2, 2], [False, False, True, True, False, False])
    """
    name = "stan_chains"
    g = as_int64(group, "group", name)
    tt, _ = as_time(t, 1, name)
    s = as_int64(stan, "stan", name)
    n = same_length(name, group=g, t=tt, stan=s)
    if int(max_gap) < 0 or int(min_len) < 1:
        raise ValueError(
            f"{name}: got max_gap={max_gap}, min_len={min_len}; expected max_gap >= 0 and "
            "min_len >= 1"
        )
    if n and (s.max() >= STAN_MODULUS or s.min() < MISSING_STAN):
        raise ValueError(
            f"{name}: stan has values in [{s.min()}, {s.max()}]; expected 0..999999 or -1 "
            "for missing"
        )
    chain = np.full(n, -1, dtype=np.int64)
    back = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return chain, back
    check_sorted(g, tt, name)
    _stan_chains(g, s, np.int64(max_gap), np.int64(min_len), chain, back)
    return chain, back
