"""Columnar row blocks of the simulator (dicts of numpy arrays, one per transaction column) and the per-day state the generator carries from one day to the next."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from features.schema import CARD_TYPES, ENTRY_MODES, FRAUD_TYPES, TRANSACTIONS, TXN_TYPES
from pipelines.simulate.cards import (
    BIN_TYPE,
)
from pipelines.simulate.reference import BINS
from pipelines.simulate.world import World

ENTRY = tuple(ENTRY_MODES)  # index -> code


E = {c: i for i, c in enumerate(ENTRY)}


T = {c: i for i, c in enumerate(TXN_TYPES)}


RESP = ("00", "51", "55", "05", "54", "61", "14", "91", "96", "57")


R = {c: i for i, c in enumerate(RESP)}


BIN_PREFIX_STR = tuple(b.prefix for b in BINS)


TXN_COLUMNS = tuple(c for c in TRANSACTIONS.names if c != "card_token")


BIN_TYPE_IDX = np.array([CARD_TYPES.index(t) for t in BIN_TYPE], dtype=np.int8)


FIELDS: dict[str, tuple[type, object]] = {
    "term": (np.int64, 0),
    "dev": (np.int8, 0),
    "t": (np.int64, 0),
    "ttype": (np.int8, T["purchase"]),
    "amount": (np.int64, 0),
    "pan": (np.uint64, 0),
    "bin": (np.int16, 0),
    "chip": (np.bool_, True),
    "entry": (np.int8, E["05"]),
    "pin": (np.bool_, False),
    "mcc": (np.int16, -1),  # -1 = the registered MCC
    "resp": (np.int8, 0),
    "orig_row": (np.int64, -1),
    "orig_num": (np.int64, -1),
    "rep_delay": (np.int64, -1),  # seconds from fraud to report; -1 = not reported
    "rep_type": (np.int8, 0),
    "rep_txn": (np.bool_, False),
    "skew": (np.bool_, False),
    "dup_stan": (np.bool_, False),
}


def block(n: int, **cols) -> dict[str, np.ndarray]:
    """A block of ``n`` rows; columns not given take their defaults."""
    out = {}
    for name, (dtype, default) in FIELDS.items():
        v = cols.get(name)
        out[name] = np.full(n, default, dtype=dtype) if v is None else np.asarray(v).astype(dtype)
        if out[name].shape != (n,):
            out[name] = np.broadcast_to(out[name], (n,)).copy()
    return out


def concat(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of all blocks, in order."""
    blocks = [b for b in blocks if len(b["t"])]
    if not blocks:
        return block(0)
    return {k: np.concatenate([b[k] for b in blocks]) for k in FIELDS}


def take(b: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    """Rows ``idx`` of a block."""
    return {k: v[idx] for k, v in b.items()}


def _pick(rng, rows: np.ndarray, share: float) -> np.ndarray:
    """A random share of ``rows``, at least one when there are any (an episode day shows)."""
    hit = rows[rng.random(len(rows)) < share]
    if len(hit) == 0 and len(rows):
        hit = rows[rng.integers(0, len(rows), size=1)]
    return hit


def _choice(rng, weights: dict[str, float], n: int, index: dict[str, int]) -> np.ndarray:
    codes = list(weights)
    p = np.array(list(weights.values()), dtype=np.float64)
    return np.array([index[c] for c in codes], dtype=np.int8)[
        rng.choice(len(codes), size=n, p=p / p.sum())
    ]


class ByTerm:
    """Row indices per terminal, found by binary search instead of a full scan."""

    def __init__(self, term: np.ndarray):
        self.order = np.argsort(term, kind="stable")
        self.sorted = term[self.order]

    def rows(self, t: int) -> np.ndarray:
        """Indices of the rows of terminal ``t`` (in their original order)."""
        lo, hi = np.searchsorted(self.sorted, [t, t + 1])
        return self.order[lo:hi]


@dataclass
class DayState:
    """What carries from one day to the next (bounded, independent of trial length)."""

    stan: np.ndarray
    stan_clone: np.ndarray
    pending: dict[str, np.ndarray] = field(default_factory=lambda: block(0))
    report_seq: int = 0


def new_state(world: World, rng: np.random.Generator) -> DayState:
    """Initial STAN counters."""
    n = world.n_terms
    return DayState(rng.integers(0, 900_000, size=n), rng.integers(0, 900_000, size=n))


@dataclass
class DayOutput:
    """One day's frames (contract columns, polars types) and the carried state."""

    transactions: pl.DataFrame
    events: pl.DataFrame | None  # made by :meth:`DayGenerator.events`
    reports: pl.DataFrame
    #: the transactions as integer arrays (term, t, ttype, entry, card_type, approved,
    #: amount, pan), in the same order, for the derived-truth judge
    rows: dict[str, np.ndarray]


def policy_value(world: World, key: str, default: float) -> np.ndarray:
    """A policy key per terminal (``default`` where the policy has no such key)."""
    out = np.empty(world.n_terms, dtype=np.float64)
    for pid, pol in world.policies.items():
        out[world.term["policy"] == pid] = float(pol.get(key, default))  # type: ignore[arg-type]
    return out


def allowed_matrix(world: World, key: str, codes: tuple[str, ...]) -> np.ndarray:
    """Boolean (terminal x code) of what each terminal's policy allows."""
    out = np.ones((world.n_terms, len(codes)), dtype=bool)
    for pid, pol in world.policies.items():
        allowed = pol.get(key)
        if allowed is not None:
            out[world.term["policy"] == pid] = np.isin(codes, allowed)  # type: ignore[arg-type]
    return out


FRAUD_TYPE_IDX = {t: i for i, t in enumerate(FRAUD_TYPES)}


def _reports(pans, t, delay, ftype, txn_num) -> dict[str, np.ndarray]:
    """Report columns as arrays (framed once per day by :func:`_report_frame`)."""
    n = len(pans)
    return {
        "pan": np.asarray(pans, dtype=np.uint64),
        "t": np.asarray(t, dtype=np.int64),
        "delay": np.asarray(delay, dtype=np.int64),
        "ftype": np.asarray(ftype, dtype=np.int64),
        "num": np.full(n, -1, dtype=np.int64)
        if txn_num is None
        else np.asarray(txn_num, dtype=np.int64),
    }


def _empty_reports() -> dict[str, np.ndarray]:
    return _reports(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), None)
