"""Hypothesis strategies shared by the kernel tests: rows sorted by (group, t)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


@st.composite
def sorted_rows(draw, max_rows: int = 40, max_t: int = 60, float_t: bool | None = None):
    """(group, t) sorted by (group, t): few groups and a small time range, so ties abound.

    Group codes are arbitrary int64 (negative and huge ones included).
    """
    n = draw(st.integers(0, max_rows))
    codes = draw(st.sampled_from([np.array([0, 1, 2]), np.array([-7, 3, 2**40])]))
    group = codes[draw(hnp.arrays(np.int64, n, elements=st.integers(0, 2)))]
    t = draw(hnp.arrays(np.int64, n, elements=st.integers(0, max_t)))
    if float_t is None:
        float_t = draw(st.booleans())
    if float_t:
        t = t.astype(np.float64) + draw(st.sampled_from([0.0, 0.5]))
    order = np.lexsort((t, group))
    return group[order], t[order]


def codes(n: int, low: int, high: int, missing: bool = False):
    """int64 codes in [low, high], sometimes scaled to a huge range, -1 allowed if missing."""
    elements = st.integers(-1 if missing else low, high)
    return st.tuples(hnp.arrays(np.int64, n, elements=elements), st.sampled_from([1, 10**12]))


def scale(values: np.ndarray, factor: int) -> np.ndarray:
    """Spread codes over a huge range (keeping -1 as -1) to exercise the np.unique path."""
    return np.where(values == -1, -1, values * factor)


windows = st.one_of(st.integers(1, 40), st.floats(0.5, 40.0))
