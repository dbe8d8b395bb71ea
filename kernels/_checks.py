"""Validation shared by the kernel wrappers: shapes, dtypes, time and sort order."""

from __future__ import annotations

import numbers

import numpy as np

from kernels._jit import jit

#: A value range at most this many times the row count is used as array codes as is.
_DENSE_RANGE_FACTOR = 4


def as_int64(x, name: str, kernel: str) -> np.ndarray:
    """``x`` as a contiguous 1-D int64 array, or a TypeError/ValueError saying what to pass."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(
            f"{kernel}: {name} must be a 1-D array, got {arr.ndim} dimensions "
            f"(shape {arr.shape}); pass one value per row"
        )
    if arr.dtype.kind == "b" or (arr.dtype.kind not in "iu" and arr.size):
        raise TypeError(
            f"{kernel}: {name} must hold integer codes, got dtype {arr.dtype}; "
            "encode it first (e.g. polars .to_physical() of a categorical, or .rank('dense'))"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def as_float64(x, name: str, kernel: str) -> np.ndarray:
    """``x`` as a contiguous 1-D float64 array (NaN allowed)."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(
            f"{kernel}: {name} must be a 1-D array, got {arr.ndim} dimensions "
            f"(shape {arr.shape}); pass one value per row"
        )
    if arr.dtype.kind not in "iuf" and arr.size:
        raise TypeError(
            f"{kernel}: {name} must be numeric, got dtype {arr.dtype}; pass floats (NaN = missing)"
        )
    return np.ascontiguousarray(arr, dtype=np.float64)


def same_length(kernel: str, **arrays: np.ndarray) -> int:
    """The common length of ``arrays``; a ValueError naming the lengths otherwise."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"{kernel}: all inputs must have one value per row, got lengths {lengths}; "
            "pass columns of the same frame"
        )
    return next(iter(lengths.values()))


def as_time(t, window_s, kernel: str) -> tuple[np.ndarray, np.int64 | np.float64]:
    """Times and window in one dtype: int64 when both are integral, else float64.

    Integer times stay exact; float times (or a fractional window) use float64.
    """
    arr = np.asarray(t)
    if arr.ndim != 1:
        raise ValueError(
            f"{kernel}: t must be a 1-D array of seconds, got shape {arr.shape}; pass one per row"
        )
    if arr.dtype.kind not in "iuf" and arr.size:
        raise TypeError(
            f"{kernel}: t must be int64 or float64 seconds, got dtype {arr.dtype}; convert "
            "timestamps first (e.g. polars .dt.epoch('s'))"
        )
    if not isinstance(window_s, numbers.Real) or not np.isfinite(window_s) or window_s <= 0:
        raise ValueError(
            f"{kernel}: window_s must be a positive finite number of seconds, got {window_s!r}"
        )
    integral = arr.dtype.kind in "iu" and float(window_s).is_integer()
    if integral:
        return np.ascontiguousarray(arr, dtype=np.int64), np.int64(window_s)
    out = np.ascontiguousarray(arr, dtype=np.float64)
    if out.size and np.isnan(out).any():
        row = int(np.flatnonzero(np.isnan(out))[0])
        raise ValueError(f"{kernel}: t is NaN at row {row}; every row needs a time")
    return out, np.float64(window_s)


def as_plain_time(t, kernel: str) -> np.ndarray:
    """Times without a window: int64 if integer, else float64 (no NaN)."""
    arr, _ = as_time(t, 1, kernel)
    return arr


@jit
def _first_unsorted(group, t):
    for i in range(1, group.shape[0]):
        if group[i] < group[i - 1] or (group[i] == group[i - 1] and t[i] < t[i - 1]):
            return i
    return -1


def check_sorted(group: np.ndarray, t: np.ndarray, kernel: str) -> None:
    """Raise a ValueError naming the first row out of (group, t) order."""
    i = _first_unsorted(group, t)
    if i >= 0:
        raise ValueError(
            f"{kernel}: rows are not sorted by (group, t): row {i} (group {group[i]}, "
            f"t {t[i]}) comes after row {i - 1} (group {group[i - 1]}, t {t[i - 1]}); "
            "sort by [group, t] first (e.g. polars .sort(['terminal_idx', 't']))"
        )


def dense_codes(values: np.ndarray, missing: bool = False) -> tuple[np.ndarray, int]:
    """Map int64 codes to 0..k-1 for array-indexed counting; ``-1`` stays -1 if ``missing``.

    Values already in a small range are shifted (no sort); others go through ``np.unique``.
    """
    n = values.shape[0]
    if n == 0:
        return values.copy(), 0
    known = values != -1 if missing else None
    present = values[known] if missing else values
    if present.size == 0:
        return values.copy(), 0
    lo, hi = int(present.min()), int(present.max())
    if hi - lo <= _DENSE_RANGE_FACTOR * n + 1024:
        codes = values - lo
        k = hi - lo + 1
        if missing:
            codes = np.where(known, codes, -1)
        return np.ascontiguousarray(codes, dtype=np.int64), k
    # Wide values (e.g. 64-bit hashes): one pass through a hash table, codes in order
    # of first appearance (np.unique sorted them: about twice the CPU on a million
    # hashes; issue 4, `trialguard bench kernels --only dense_codes`). The table has
    # >= 2n slots of 16 bytes (16 MiB for a 500k-row partition).
    vals = np.ascontiguousarray(values, dtype=np.int64)
    flags = np.ones(n, dtype=np.bool_) if known is None else np.ascontiguousarray(known)
    codes = np.empty(n, dtype=np.int64)
    k = _first_seen_codes(vals, flags, max(4, int(2 * n - 1).bit_length()), codes)
    return codes, int(k)


_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing


@jit
def _first_seen_codes(values, known, bits, out):
    # Open addressing with linear probing in a table of 2**bits >= 2n slots.
    size = 1 << bits
    mask = size - 1
    shift = np.uint64(64 - bits)
    keys = np.empty(size, dtype=np.int64)
    slot_code = np.full(size, -1, dtype=np.int64)
    k = 0
    for i in range(values.shape[0]):
        if not known[i]:
            out[i] = -1
            continue
        v = values[i]
        h = np.int64((np.uint64(v) * _HASH_MULT) >> shift)
        while slot_code[h] >= 0 and keys[h] != v:
            h = (h + 1) & mask
        if slot_code[h] < 0:
            keys[h] = v
            slot_code[h] = k
            k += 1
        out[i] = slot_code[h]
    return k
