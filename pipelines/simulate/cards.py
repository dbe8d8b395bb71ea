"""Card numbers: Luhn-valid PANs from BINs, vectorised over numpy ``uint64`` arrays."""

from __future__ import annotations

import numpy as np

from pipelines.simulate.reference import BINS

BIN_PREFIX = np.array([int(b.prefix) for b in BINS], dtype=np.uint64)
BIN_LENGTH = np.array([b.length for b in BINS], dtype=np.int64)
BIN_WEIGHT = np.array([b.weight for b in BINS], dtype=np.float64) / sum(b.weight for b in BINS)
BIN_CHIP = np.array([b.chip for b in BINS], dtype=np.float64)
BIN_TYPE = np.array([b.card_type for b in BINS], dtype=object)
BIN_COUNTRY = np.array([b.country for b in BINS], dtype=object)


def luhn_check_digit(payload: np.ndarray, n_digits: np.ndarray) -> np.ndarray:
    """Luhn check digit of each ``payload`` (the PAN without its last digit).

    Parameters
    ----------
    payload : ndarray of uint64
        The leading digits of each PAN as a number.
    n_digits : ndarray of int
        How many digits each payload has (leading zeros are not possible here).
    """
    x = payload.astype(np.uint64, copy=True)
    total = np.zeros(x.shape, dtype=np.int64)
    for i in range(int(n_digits.max(initial=0))):
        d = (x % np.uint64(10)).astype(np.int64)
        x //= np.uint64(10)
        live = i < n_digits
        if i % 2 == 0:  # rightmost payload digit is doubled
            d = d * 2
            d = np.where(d > 9, d - 9, d)
        total += np.where(live, d, 0)
    return ((10 - total % 10) % 10).astype(np.uint64)


def luhn_valid(pans: np.ndarray) -> np.ndarray:
    """Whether each PAN (uint64) passes the Luhn check."""
    pans = np.asarray(pans, dtype=np.uint64)
    n = np.floor(np.log10(np.maximum(pans, 1).astype(np.float64))).astype(np.int64) + 1
    return luhn_check_digit(pans // np.uint64(10), n - 1) == pans % np.uint64(10)


def _bin_luhn_part(prefix: str, length: int) -> int:
    """Luhn sum contributed by a BIN's digits in a PAN of ``length`` digits."""
    total = 0
    for j, ch in enumerate(reversed(prefix)):
        i = length - 7 + j  # position from the right within the payload (PAN minus check digit)
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total


BIN_LUHN = np.array([_bin_luhn_part(b.prefix, b.length) for b in BINS], dtype=np.int64)


def make_pans(bin_idx: np.ndarray, account: np.ndarray) -> np.ndarray:
    """PANs (uint64) from BIN indices and account numbers, with their Luhn digit.

    ``account`` is reduced modulo the room the BIN leaves (length - 7 digits).
    """
    length = BIN_LENGTH[bin_idx]
    room = 10 ** (length - 7)
    acct = np.asarray(account, dtype=np.int64) % room
    total = BIN_LUHN[bin_idx].copy()
    x = acct.copy()
    for i in range(int((length - 7).max(initial=0))):
        d = x % 10
        x //= 10
        if i % 2 == 0:
            d = np.where(d > 4, d * 2 - 9, d * 2)
        total += np.where(i < length - 7, d, 0)
    check = (10 - total % 10) % 10
    payload = BIN_PREFIX[bin_idx] * room.astype(np.uint64) + acct.astype(np.uint64)
    return payload * np.uint64(10) + check.astype(np.uint64)


def random_cards(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random cards: (pan uint64, bin index int16, has-chip bool)."""
    bin_idx = rng.choice(len(BINS), size=n, p=BIN_WEIGHT).astype(np.int16)
    account = rng.integers(0, 10**12, size=n, dtype=np.int64)
    pans = make_pans(bin_idx, account)
    chip = rng.random(n) < BIN_CHIP[bin_idx]
    return pans, bin_idx, chip


def sequential_cards(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` card numbers enumerated by a tester: one BIN, consecutive accounts.

    Returns (pan uint64, bin index int16). Consecutive account numbers give
    last-4 digits that step by about ten, as seen from BIN + last 4.
    """
    b = int(rng.choice(len(BINS), p=BIN_WEIGHT))
    start = int(rng.integers(0, 10**8))
    step = int(rng.integers(1, 3))
    account = np.arange(n, dtype=np.int64) * step + start
    bin_idx = np.full(n, b, dtype=np.int16)
    return make_pans(bin_idx, account), bin_idx
