"""The only place numba flags are set.

``fastmath`` stays off: fraud scores must be reproducible bit for bit across runs
and machines. ``cache=True`` keeps compiled kernels between processes (the first
run of the test suite pays the compile cost once).
"""

from __future__ import annotations

import functools

import numba

#: Serial kernels.
jit = functools.partial(numba.njit, cache=True, fastmath=False)
#: Kernels with a ``numba.prange`` loop over independent rows.
pjit = functools.partial(numba.njit, cache=True, fastmath=False, parallel=True)
