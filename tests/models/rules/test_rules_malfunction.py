"""Malfunction against the terminal's own baseline: technical-decline incidents."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest
from scipy.stats import poisson

from models.config import load_config
from models.rules.common import poisson_surprise
from models.rules.engine import detect

_path = Path(__file__).parents[2] / "features" / "_frames.py"
_spec = importlib.util.spec_from_file_location("_frames", _path)
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

CFG = load_config()


def _day(txns: pl.DataFrame) -> pl.DataFrame:
    return F.terminal_day_of(txns, CFG)


def _codes(day: pl.DataFrame) -> list[str]:
    det = detect(day.lazy(), CFG).collect().filter(pl.col("behaviour") == "malfunction")
    return [r["code"] for rs in det.get_column("reasons").to_list() for r in rs]


def _technical_at(n: int, positions: list[int]) -> list[str]:
    return ["91" if i in positions else "00" for i in range(n)]


def test_outage_burst_counts_as_one_incident():
    # 200 sales every 2 min; 8 consecutive failures (16 minutes: one outage) and two
    # isolated failures hours apart
    codes = _technical_at(200, [*range(50, 58), 120, 180])
    day = _day(F.txns(200, step_s=120, response_code=codes))
    assert day.get_column("n_technical").item() == 10
    assert day.get_column("n_technical_incidents").item() == 3


def test_single_bad_hour_on_a_busy_day_does_not_fire():
    # 300 sales, 10 technical declines within 15 minutes: a line outage
    day = _day(F.txns(300, step_s=100, response_code=_technical_at(300, [*range(100, 110)])))
    assert day.get_column("n_technical_incidents").item() == 1
    assert _codes(day) == []


def test_same_declines_spread_over_the_day_fire():
    # the same 10 technical declines, one every 50 minutes: a device failing all day
    day = _day(F.txns(300, step_s=100, response_code=_technical_at(300, list(range(5, 300, 30)))))
    assert day.get_column("n_technical_incidents").item() == 10
    assert "technical_jump" in _codes(day)


def _window(incidents_w: int, txn_w: int, incidents_base: int, txn_base: int) -> pl.DataFrame:
    """A day with one technical decline, the window / own-baseline counts given."""
    day = _day(F.txns(40, response_code=_technical_at(40, [20])))
    return day.with_columns(
        pl.lit(txn_w, dtype=pl.Int64).alias("n_txn_w"),
        pl.lit(txn_w, dtype=pl.Int64).alias("n_cap_w"),
        pl.lit(incidents_w, dtype=pl.Int64).alias("n_technical_w"),
        pl.lit(incidents_w, dtype=pl.Int64).alias("n_technical_incidents_w"),
        pl.lit(txn_base, dtype=pl.Int64).alias("n_txn_base"),
        pl.lit(incidents_base, dtype=pl.Int64).alias("n_technical_incidents_base"),
    )


def test_technical_declines_tripling_against_own_baseline_fire():
    # a busy terminal: 60 incidents in 20 000 messages before (0.3%), 63 in the last
    # 7 000 (0.9%): below the 10% rate threshold, but three times its own rate
    assert "technical_jump" in _codes(_window(63, 7_000, 60, 20_000))


def test_steady_peer_normal_rate_does_not_fire():
    # the same terminal at its usual rate
    assert _codes(_window(22, 7_000, 60, 20_000)) == []


def test_own_history_decides_for_the_same_window():
    # 18 incidents in 1 400 messages: far above the reference rate for a terminal
    # with no history, ordinary for one whose line has always failed 1% of the time
    assert "technical_jump" in _codes(_window(18, 1_400, 0, 0))
    assert _codes(_window(18, 1_400, 40, 4_000)) == []


def test_no_technical_decline_today_does_not_fire():
    day = _window(18, 1_400, 0, 0).with_columns(
        pl.lit(0, dtype=pl.Int64).alias(c) for c in ("n_technical", "n_technical_incidents")
    )
    assert "technical_jump" not in _codes(day)


@pytest.mark.parametrize(
    ("k", "lam"), [(4, 0.1), (6, 0.39), (9, 0.35), (10, 2.0), (63, 21.0), (30, 12.0)]
)
def test_poisson_surprise_is_a_close_lower_bound(k, lam):
    exact = -poisson.logsf(k - 1, lam) / 2.302585092994046
    got = pl.select(poisson_surprise(pl.lit(k), pl.lit(lam))).item()
    assert got <= exact + 1e-6
    assert got >= exact - 0.3


def test_poisson_surprise_is_zero_when_count_is_expected():
    assert pl.select(poisson_surprise(pl.lit(3), pl.lit(5.0))).item() == 0.0
