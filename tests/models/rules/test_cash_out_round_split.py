"""Cash-out by split sales summing to a round figure (domain §1 #5 "拆单")."""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from pathlib import Path

import polars as pl

from features.daily import terminal_day
from features.policy import policy_frame
from features.transactions import enrich_transactions
from models.config import load_config
from models.rules.engine import detect

_path = Path(__file__).parents[2] / "features" / "_frames.py"
_spec = importlib.util.spec_from_file_location("_frames", _path)
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

CFG = load_config()
# 14,076.00 + 23,468.00 + 22,456.00 = 60,000.00 yuan: non-round pieces, round total.
PIECES = [1407600, 2346800, 2245600]


def day(pieces: list[int], step_s: int = 150, repeat_later: bool = True) -> pl.DataFrame:
    """20 ordinary sales, one card's ``pieces`` ``step_s`` apart, optionally a 4th use."""
    amounts = [*pieces, 888800] if repeat_later else list(pieces)
    times = [F.T0 + timedelta(hours=3, seconds=step_s * i) for i in range(len(pieces))]
    if repeat_later:
        times.append(F.T0 + timedelta(hours=6))
    card = F.txns(len(amounts), card_token="c1", card_type="credit", amount_minor=amounts)
    card = card.with_columns(
        pl.Series("txn_time", times),
        pl.format("c1-{}", pl.col("txn_id")).alias("txn_id"),
        (pl.col("stan").cast(pl.Int64) + 500).cast(pl.String).str.pad_start(6, "0"),
        (pl.col("rrn").cast(pl.Int64) + 500).cast(pl.String).str.pad_start(12, "0"),
    )
    return pl.concat([F.txns(20), card]).sort("txn_time")


def run(txns: pl.DataFrame) -> tuple[dict, pl.DataFrame]:
    registry = F.registry()
    pol = policy_frame({}, CFG["default_policy"])
    d = terminal_day(enrich_transactions(txns.lazy(), registry.lazy(), pol, CFG), CFG)
    d = d.with_columns(pl.lit(0, dtype=pl.Int64).alias("n_implausible_time")).collect()
    det = detect(d.lazy(), CFG).collect().filter(pl.col("behaviour") == "cash_out")
    return d.row(0, named=True), det


def codes(det: pl.DataFrame) -> set[str]:
    return {r["code"] for r in det["reasons"][0]} if det.height else set()


def test_non_round_pieces_adding_up_to_a_round_figure_are_a_round_split():
    d, det = run(day(PIECES))
    assert d["n_round_splits"] == 1
    assert d["max_same_card"] == 4
    # repeat card (4 uses) + round split: two indicators, a cash-out day
    assert codes(det) == {"repeat_card", "round_split"}
    assert set(det["evidence"][0]) >= {"c1-T0000001-00000", "c1-T0000001-00002"}


def test_a_non_round_total_is_not_a_round_split():
    d, det = run(day([1407600, 2346800, 2245601]))
    assert d["n_round_splits"] == 0
    assert det.height == 0  # repeat card alone is one indicator


def test_round_pieces_are_not_a_round_split():
    d, _ = run(day([2000000, 2000000, 2000000]))
    assert d["n_round_splits"] == 0


def test_pieces_far_apart_are_not_one_sale():
    window = int(CFG["cash_out"]["same_card_window_s"])
    d, det = run(day(PIECES, step_s=window + 60))
    assert d["n_round_splits"] == 0
    assert det.height == 0


def test_the_split_alone_is_one_indicator():
    d, det = run(day(PIECES, repeat_later=False))
    assert d["n_round_splits"] == 1
    assert det.height == 0
