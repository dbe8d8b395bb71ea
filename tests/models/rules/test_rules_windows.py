"""Windowed rules: repeated near-cap tickets (cash_out) and a short malfunction window."""

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
from models.rules.malfunction import window_sums
from pipelines.detect.partition import with_history

_path = Path(__file__).parents[2] / "features" / "_frames.py"
_spec = importlib.util.spec_from_file_location("_frames", _path)
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

CFG = load_config()
CAP = int(CFG["default_policy"]["max_txn_amount_minor"])


def _day(txns: pl.DataFrame) -> pl.DataFrame:
    reg = F.registry([*txns.get_column("terminal_id").unique()])
    pol = policy_frame({}, CFG["default_policy"])
    day = terminal_day(enrich_transactions(txns.lazy(), reg.lazy(), pol, CFG), CFG).collect()
    return day.with_columns(pl.lit(0, dtype=pl.Int64).alias("n_implausible_time"))


def _codes(day: pl.DataFrame, behaviour: str) -> list[str]:
    det = detect(day.lazy(), CFG).collect().filter(pl.col("behaviour") == behaviour)
    return [r["code"] for rs in det.get_column("reasons").to_list() for r in rs]


def _low_volume_day(near_cap: int) -> pl.DataFrame:
    """Eight ordinary sales a day, ``near_cap`` of them just under the cap (0.3% below)."""
    amounts = [CAP - CAP * 3 // 1000 if i < near_cap else 3250 + 17 * i for i in range(8)]
    return _day(F.txns(8, step_s=3600, amount_minor=amounts))


def test_near_cap_sales_are_counted_per_day():
    assert _low_volume_day(2).get_column("n_just_under_cap").item() == 2
    # a declined near-cap attempt is not a sale
    codes = ["05", *["00"] * 7]
    amounts = [CAP - 100, *[3250] * 7]
    day = _day(F.txns(8, step_s=3600, amount_minor=amounts, response_code=codes))
    assert day.get_column("n_just_under_cap").item() == 0


def _with_week(day: pl.DataFrame, in_week: int) -> pl.DataFrame:
    return day.with_columns(pl.lit(in_week, dtype=pl.Int64).alias("n_just_under_cap_w"))


def test_repeated_near_cap_tickets_over_a_week_fire_cash_out():
    day = _with_week(_low_volume_day(1), int(CFG["cash_out"]["just_under_cap_week"]))
    assert "just_under_cap_week" in _codes(day, "cash_out")


def test_one_near_cap_ticket_in_a_week_is_a_coincidence():
    day = _with_week(_low_volume_day(1), 1)
    assert _codes(day, "cash_out") == []
    # without history the day's own count is the window: one ticket, no flag
    assert _codes(_low_volume_day(1), "cash_out") == []


def test_week_count_needs_a_near_cap_ticket_today():
    day = _with_week(_low_volume_day(0), 10)
    assert _codes(day, "cash_out") == []


def test_with_history_sums_near_cap_tickets_over_the_cash_out_window():
    today = _low_volume_day(1)
    d = today.get_column("local_date").item()
    w = int(CFG["cash_out"]["window_days"])
    hist = pl.DataFrame(
        {
            "terminal_id": [today.get_column("terminal_id").item()] * 3,
            # inside the window, inside, and one day too old
            "local_date": [
                d - timedelta(days=1),
                d - timedelta(days=w - 1),
                d - timedelta(days=w),
            ],
            "n_txn": [8, 8, 8],
            "cap_amount": [0, 0, 0],
            "n_cap": [8, 8, 8],
            "n_technical": [0, 0, 0],
            "n_technical_incidents": [0, 0, 0],
            "n_reversal": [0, 0, 0],
            "n_stan_repeat": [0, 0, 0],
            "n_stan_conflict": [0, 0, 0],
            "n_implausible_time": [0, 0, 0],
            "n_fallback": [0, 0, 0],
            "n_just_under_cap": [1, None, 5],  # a day stored before the column: null
        }
    )
    out = with_history(today, hist, CFG)
    assert out.get_column("n_just_under_cap_w").item() == 1 + 1
    assert {a for _c, _d, a in window_sums(CFG)} <= set(out.columns)


def _malfunction_day(inc_s: int, txn_s: int, inc_w: int, txn_w: int) -> pl.DataFrame:
    """A day with one technical decline and the given short / 7-day window counts.

    The own baseline is empty, so the expected rate is the reference rate.
    """
    day = _day(F.txns(40, response_code=["91" if i == 20 else "00" for i in range(40)]))
    return day.with_columns(
        pl.lit(txn_w, dtype=pl.Int64).alias("n_txn_w"),
        pl.lit(txn_w, dtype=pl.Int64).alias("n_cap_w"),
        pl.lit(inc_w, dtype=pl.Int64).alias("n_technical_w"),
        pl.lit(inc_w, dtype=pl.Int64).alias("n_technical_incidents_w"),
        pl.lit(txn_s, dtype=pl.Int64).alias("n_txn_s"),
        pl.lit(inc_s, dtype=pl.Int64).alias("n_technical_incidents_s"),
        pl.lit(0, dtype=pl.Int64).alias("n_txn_base"),
        pl.lit(0, dtype=pl.Int64).alias("n_technical_incidents_base"),
    )


def test_fault_of_the_last_two_days_fires_though_diluted_in_the_week():
    # 6 incidents in 2 days of 120 messages (0.36 expected at the reference rate);
    # the same 6 over a busy week of 1 500 messages (4.5 expected) are unremarkable
    assert _codes(_malfunction_day(6, 1500, 6, 1500), "malfunction") == []
    det = _codes(_malfunction_day(6, 120, 6, 1500), "malfunction")
    assert "technical_jump" in det


def test_few_incidents_in_two_days_do_not_fire():
    # three incidents in two quiet days: a poor line, below min_incidents
    assert _codes(_malfunction_day(3, 40, 3, 140), "malfunction") == []


def test_short_window_reason_names_its_window():
    det = detect(_malfunction_day(6, 120, 6, 1500).lazy(), CFG).collect()
    texts = [
        r["text"]
        for rs in det.filter(pl.col("behaviour") == "malfunction").get_column("reasons").to_list()
        for r in rs
        if r["code"] == "technical_jump"
    ]
    assert texts and f"in {int(CFG['malfunction']['short_window_days'])} days over 120" in texts[0]
