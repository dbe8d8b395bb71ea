"""Kernel-backed sequence features equal their polars formulations row for row."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from features.sequences import same_card_burst, serial_switch, stan_repeat, with_sequence_kernels
from models.config import load_config

CFG = load_config()


def sorted_rows(seed: int, n: int = 4000) -> pl.DataFrame:
    """Rows sorted by (terminal, time) with many time ties, null serials and cards."""
    rng = np.random.default_rng(seed)
    term = np.sort(rng.integers(0, 40, n))
    # Coarse times (multiples of 5 minutes) give many ties and gaps of exactly 600 s.
    secs = rng.integers(0, 60, n) * 300 + rng.choice([0, 0, 0, 1], n)
    order = np.lexsort((np.arange(n), secs, term))
    term, secs = term[order], secs[order]
    serial = rng.choice(np.array(["A", "B", "C", None], dtype=object), n, p=[0.6, 0.2, 0.1, 0.1])
    card = rng.choice(np.array(["c1", "c2", "c3", None], dtype=object), n, p=[0.5, 0.3, 0.1, 0.1])
    return pl.DataFrame(
        {
            "terminal_id": [f"T{x:03d}" for x in term],
            "txn_time": [datetime(2026, 3, 1) + timedelta(seconds=int(s)) for s in secs],
            "device_serial": pl.Series(serial.tolist(), dtype=pl.String),
            "card_token": pl.Series(card.tolist(), dtype=pl.String),
            "cap_txn": rng.random(n) < 0.8,
            "local_date": [datetime(2026, 3, 1).date()] * n,
            "stan": pl.Series(
                rng.choice(
                    np.array(["000001", "000002", "000003", None], dtype=object), n
                ).tolist(),
                dtype=pl.String,
            ),
            "amount_minor": rng.choice([100, 200], n),
        }
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernels_equal_polars_expressions(seed):
    df = sorted_rows(seed)
    co = CFG["cash_out"]
    k, w = int(co["same_card_burst"]), int(co["same_card_window_s"])
    want = df.with_columns(serial_switch(), stan_repeat(), same_card_burst(k, w))
    got = with_sequence_kernels(df, CFG)
    assert got.get_column("stan_repeat").to_list() == want.get_column("stan_repeat").to_list()
    assert 0 < got.get_column("stan_repeat").sum() < df.height
    assert got.get_column("serial_switch").to_list() == want.get_column("serial_switch").to_list()
    assert (
        got.get_column("same_card_burst").to_list() == want.get_column("same_card_burst").to_list()
    )
    # The data exercise both outcomes (the comparison is not vacuous).
    assert 0 < got.get_column("same_card_burst").sum() < df.height
    assert 0 < got.get_column("serial_switch").sum() < df.height


def test_tied_sales_follow_row_order():
    """Three sales of one card at the same second: only the third is a split sale."""
    t = datetime(2026, 3, 1, 10)
    df = pl.DataFrame(
        {
            "terminal_id": ["T1"] * 4,
            "txn_time": [t, t, t, t + timedelta(seconds=601)],
            "device_serial": ["A"] * 4,
            "card_token": ["c"] * 4,
            "cap_txn": [True] * 4,
            "local_date": [t.date()] * 4,
            "stan": ["000001", "000001", None, "000001"],
            "amount_minor": [100] * 4,
        }
    )
    got = with_sequence_kernels(df, CFG)
    assert got.get_column("same_card_burst").to_list() == [False, False, True, False]
    # A tied row with the same STAN content is a repeat; the first one is not.
    assert got.get_column("stan_repeat").to_list() == [False, True, False, True]
