"""Fraud hotspot on hand-made scenarios: fraud matched to the terminal's own sales."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import polars as pl
import pytest

from features.schema import DETECTION_SCHEMA
from models.hotspot import HotspotParams, score_fraud_hotspot, terminal_sales

AS_OF = date(2024, 3, 31)
REPORT_SCHEMA = {
    "report_id": pl.String,
    "card_token": pl.String,
    "txn_id": pl.String,
    "fraud_time": pl.Datetime("us"),
    "reported_at": pl.Datetime("us"),
}


def tid(i: int) -> str:
    return f"T{i:07d}"


def sales(n_terminals: int = 30, per_terminal: int = 100) -> list[dict]:
    """Each terminal: 100 purchases of 100.00 by distinct cards, 2-29 March."""
    return [
        {
            "txn_id": f"x{t}_{j}",
            "terminal_id": tid(t),
            "card_token": f"c{t}_{j}",
            "txn_time": datetime(2024, 3, 2 + j % 28, 9) + timedelta(minutes=j),
            "txn_type": "purchase",
            "amount_minor": 10_000,
        }
        for t in range(n_terminals)
        for j in range(per_terminal)
    ]


def run(txns, reports, as_of=AS_OF, params=None):
    params = params or HotspotParams()
    tx = pl.DataFrame(txns)
    rp = pl.DataFrame(reports, schema=REPORT_SCHEMA)
    return score_fraud_hotspot(rp, tx, terminal_sales(tx, *params.window(as_of)), as_of, params)


def by_id(t: int, j: int, reported=datetime(2024, 3, 30)) -> dict:
    txn_time = datetime(2024, 3, 2 + j % 28, 9) + timedelta(minutes=j)
    return {
        "report_id": f"r{t}_{j}",
        "card_token": f"c{t}_{j}",
        "txn_id": f"x{t}_{j}",
        "fraud_time": txn_time + timedelta(days=2),  # issuer's date need not be exact
        "reported_at": reported,
    }


def by_card_and_time(t: int, j: int) -> dict:
    txn_time = datetime(2024, 3, 2 + j % 28, 9) + timedelta(minutes=j)
    return {
        "report_id": f"r{t}_{j}",
        "card_token": f"c{t}_{j}",
        "txn_id": None,
        "fraud_time": txn_time + timedelta(minutes=3),
        "reported_at": datetime(2024, 3, 30),
    }


def background_reports() -> list[dict]:
    return [by_id(t, 0) for t in range(1, 11)]  # one fraud at each of 10 terminals


def test_hotspot_by_txn_id_is_flagged():
    reports = background_reports() + [by_id(0, j) for j in range(8)]
    res = run(sales(), reports)
    assert res.detections.get_column("terminal_id").to_list() == [tid(0)]
    det = res.detections.row(0, named=True)
    assert res.detections.schema == DETECTION_SCHEMA
    assert sorted(det["evidence"]) == sorted(f"x0_{j}" for j in range(8))
    stats = res.stats.filter(pl.col("terminal_id") == tid(0)).row(0, named=True)
    # peers: 10 frauds in 2900 sales, plus one (smoothing) -> 11 / 2901
    assert stats["n_fraud"] == 8 and stats["n_sales"] == 100
    assert stats["peer_rate"] == pytest.approx(11 / 2901)
    assert stats["lift"] == pytest.approx(0.08 / (11 / 2901))
    assert [r["code"] for r in det["reasons"]] == [
        "hotspot_fraud_count",
        "hotspot_lift",
        "hotspot_amount",
        "hotspot_significance",
    ]
    assert "8 of 100 sales" in det["reasons"][0]["text"]


def test_hotspot_by_card_and_time_is_flagged():
    reports = background_reports() + [by_card_and_time(0, j) for j in range(8)]
    res = run(sales(), reports)
    assert res.detections.get_column("terminal_id").to_list() == [tid(0)]
    # a tolerance shorter than the issuer's 3-minute offset matches nothing
    strict = run(sales(), reports, params=HotspotParams(match_minutes=1))
    assert strict.detections.height == 0


def test_below_minimum_count_or_not_yet_reported_is_not_flagged():
    two = background_reports() + [by_id(0, j) for j in range(2)]
    assert run(sales(), two).detections.height == 0
    late = background_reports() + [by_id(0, j, reported=datetime(2024, 4, 2)) for j in range(8)]
    assert run(sales(), late).detections.height == 0
    assert run(sales(), late, as_of=date(2024, 4, 2)).detections.height == 1


def test_fraud_spread_over_peers_is_not_a_hotspot():
    # 3 frauds each at 20 terminals: no terminal stands out from its peers
    reports = [by_id(t, j) for t in range(20) for j in range(3)]
    res = run(sales(), reports)
    assert res.detections.height == 0
    assert res.stats["lift"].max() < 3
