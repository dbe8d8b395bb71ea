"""Common point of compromise on hand-made scenarios (domain.md §2.1)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from scipy.stats import binom

from features.schema import DETECTION_SCHEMA
from models.compromise import (
    CompromiseParams,
    at_risk_cards,
    bh_adjust,
    binomial_tail,
    match_fraud_transactions,
    score_card_compromise,
    terminal_card_counts,
)

AS_OF = date(2024, 4, 10)
TXN_SCHEMA = {
    "txn_id": pl.String,
    "terminal_id": pl.String,
    "card_token": pl.String,
    "card_bin": pl.String,
    "card_last4": pl.String,
    "txn_time": pl.Datetime("us"),
}
REPORT_SCHEMA = {
    "report_id": pl.String,
    "card_token": pl.String,
    "txn_id": pl.String,
    "fraud_time": pl.Datetime("us"),
    "reported_at": pl.Datetime("us"),
}


def tid(i: int) -> str:
    return f"T{i:07d}"


def background(n_terminals: int = 20, cards_per_terminal: int = 40) -> list[dict]:
    """Each terminal sees its own 40 cards once in March, card j on day 1 + j % 20."""
    rows = []
    for t in range(n_terminals):
        for j in range(cards_per_terminal):
            rows.append(
                {
                    "txn_id": f"x{t}_{j}",
                    "terminal_id": tid(t),
                    "card_token": f"c{t}_{j}",
                    "card_bin": "622202",
                    "card_last4": f"{j:04d}",
                    "txn_time": datetime(2024, 3, 1 + j % 20, 12, 0),
                }
            )
    return rows


def report(card: str, fraud_time: datetime, reported_at: datetime, txn_id=None) -> dict:
    return {
        "report_id": f"r_{card}_{fraud_time:%m%d%H%M}",
        "card_token": card,
        "txn_id": txn_id,
        "fraud_time": fraud_time,
        "reported_at": reported_at,
    }


def fraud_elsewhere(cards: list[str], reported_at=datetime(2024, 4, 5)) -> list[dict]:
    """Fraud on 28 March at a terminal outside the trial (no txn_id we know)."""
    return [report(c, datetime(2024, 3, 28, 10, 0), reported_at) for c in cards]


def run(txns: list[dict], reports: list[dict], as_of=AS_OF, params=None):
    params = params or CompromiseParams()
    tx = pl.DataFrame(txns, schema=TXN_SCHEMA)
    rp = pl.DataFrame(reports, schema=REPORT_SCHEMA)
    counts, n_active = terminal_card_counts(tx, *params.window(as_of))
    return score_card_compromise(rp, tx, counts, n_active, as_of, params), tx, rp


def standard_reports() -> list[dict]:
    # T0: 5 of its 40 cards later defrauded; T1: 1 of 40; T2..T7: 1 each (background)
    cards = [f"c0_{j}" for j in range(5)] + ["c1_0"] + [f"c{t}_0" for t in range(2, 8)]
    return fraud_elsewhere(cards)


def test_cpp_with_five_of_forty_cards_is_flagged_and_one_card_is_not():
    res, _, _ = run(background(), standard_reports())
    flagged = res.detections.get_column("terminal_id").to_list()
    assert flagged == [tid(0)]  # T1 has k=1 < 3, background terminals too
    stats = res.stats.filter(pl.col("terminal_id") == tid(0)).row(0, named=True)
    # 12 F-cards among 800 active cards: p = 1.5 %; k = 5 of n = 40
    assert stats["k"] == 5 and stats["n"] == 40
    assert stats["base_rate"] == pytest.approx(12 / 800)
    assert stats["lift"] == pytest.approx(5 / (40 * 12 / 800))
    assert stats["p_value"] == pytest.approx(binom.sf(4, 40, 12 / 800))
    det = res.detections.row(0, named=True)
    assert res.detections.schema == DETECTION_SCHEMA
    assert 0.9 < det["score"] <= 1.0 and det["day"] == AS_OF
    assert sorted(det["evidence"]) == [f"x0_{j}" for j in range(5)]
    codes = [r["code"] for r in det["reasons"]]
    assert codes == ["cpp_fraud_cards", "cpp_lift", "cpp_significance", "cpp_period"]
    assert "5 of 40 cards" in det["reasons"][0]["text"]
    one = res.stats.filter(pl.col("terminal_id") == tid(1)).row(0, named=True)
    assert one["k"] == 1 and not one["flagged"]


def test_bh_controls_many_terminals():
    # 100 terminals x 10 cards; 50 F-cards: 3 at T0, one at each of 47 others (p = 5 %).
    txns = background(n_terminals=100, cards_per_terminal=10)
    cards = ["c0_0", "c0_1", "c0_2"] + [f"c{t}_0" for t in range(1, 48)]
    res, _, _ = run(txns, fraud_elsewhere(cards))
    t0 = res.stats.filter(pl.col("terminal_id") == tid(0)).row(0, named=True)
    assert t0["k"] == 3 and t0["p_value"] < 0.05  # significant alone ...
    assert t0["q_value"] > 0.05  # ... not after false-discovery control over 100 terminals
    assert res.detections.height == 0


def test_reports_not_yet_known_are_ignored():
    late = fraud_elsewhere([f"c0_{j}" for j in range(5)], reported_at=datetime(2024, 4, 12, 9))
    reports = late + fraud_elsewhere(["c1_0"] + [f"c{t}_0" for t in range(2, 8)])
    res, _, _ = run(background(), reports, as_of=AS_OF)
    assert res.detections.height == 0
    assert res.stats.filter(pl.col("terminal_id") == tid(0))["k"].item() == 0
    later, _, _ = run(background(), reports, as_of=date(2024, 4, 12))
    assert later.detections.get_column("terminal_id").to_list() == [tid(0)]


def hotspot_scenario(report_txn_id: bool) -> tuple[list[dict], list[dict]]:
    """T9 accepts 5 stolen cards; each is used there twice, days before the issuer's date.

    The issuer's ``fraud_time`` is the later of the two uses (its posting), so the earlier
    fraudulent use falls inside the exposure window unless it is recognised as fraud.
    """
    txns = background()
    reports = fraud_elsewhere(["c1_0"] + [f"c{t}_0" for t in range(2, 8)])
    for j in range(5):
        card = f"stolen{j}"
        first = datetime(2024, 3, 20, 15, j)
        second = first + timedelta(days=5)
        for n, ts in enumerate((first, second)):
            txns.append(
                {
                    "txn_id": f"h{j}_{n}",
                    "terminal_id": tid(9),
                    "card_token": card,
                    "card_bin": "622848",
                    "card_last4": f"900{j}",
                    "txn_time": ts,
                }
            )
            if report_txn_id:  # issuer knows the txn, dates it at its posting
                reports.append(report(card, second, datetime(2024, 4, 1), txn_id=f"h{j}_{n}"))
            else:  # issuer knows only the card and the exact time
                reports.append(report(card, ts, datetime(2024, 4, 1)))
    return txns, reports


def test_hotspot_fraud_is_not_a_cpp_when_reports_name_the_txn():
    txns, reports = hotspot_scenario(report_txn_id=True)
    res, _, _ = run(txns, reports)
    assert tid(9) not in res.detections.get_column("terminal_id").to_list()
    assert res.stats.filter(pl.col("terminal_id") == tid(9))["k"].item() == 0
    # the same data with the report's txn_id unknown and fraud_time shifted would count them:
    unmatched = [dict(r, txn_id=None) for r in reports]
    res2, _, _ = run(txns, unmatched)
    assert res2.stats.filter(pl.col("terminal_id") == tid(9))["k"].item() == 5


def test_hotspot_fraud_is_excluded_by_card_and_time_without_gap():
    # with no gap, a fraud use right at fraud_time would be inside the window unless matched
    txns, reports = hotspot_scenario(report_txn_id=False)
    params = CompromiseParams(gap_days=0, match_minutes=10)
    res, _, _ = run(txns, reports, params=params)
    assert res.stats.filter(pl.col("terminal_id") == tid(9))["k"].item() == 0
    loose = CompromiseParams(gap_days=0, match_minutes=0)
    shifted = [dict(r, fraud_time=r["fraud_time"] + timedelta(minutes=30)) for r in reports]
    res2, _, _ = run(txns, shifted, params=loose)
    assert res2.stats.filter(pl.col("terminal_id") == tid(9))["k"].item() == 5


def test_match_fraud_transactions_by_id_and_by_card_and_time():
    tx = pl.DataFrame(
        [
            {
                "txn_id": "a",
                "terminal_id": tid(1),
                "card_token": "k1",
                "txn_time": datetime(2024, 3, 1, 10),
            },
            {
                "txn_id": "b",
                "terminal_id": tid(1),
                "card_token": "k2",
                "txn_time": datetime(2024, 3, 1, 10, 5),
            },
            {
                "txn_id": "c",
                "terminal_id": tid(1),
                "card_token": "k2",
                "txn_time": datetime(2024, 3, 1, 11),
            },
        ]
    )
    rp = pl.DataFrame(
        [
            report("k1", datetime(2024, 3, 9), datetime(2024, 3, 10), txn_id="a"),
            report("k2", datetime(2024, 3, 1, 10, 12), datetime(2024, 3, 10)),
        ],
        schema=REPORT_SCHEMA,
    )
    matched = match_fraud_transactions(rp, tx, match_minutes=10)
    assert sorted(matched.get_column("txn_id").to_list()) == ["a", "b"]


def test_at_risk_list_is_exactly_the_other_cards_in_the_compromise_period():
    res, tx, rp = run(background(), standard_reports())
    period = res.periods.row(0, named=True)
    assert (period["period_start"], period["period_end"]) == (date(2024, 3, 1), date(2024, 3, 5))
    risk = at_risk_cards(tx, res.periods, rp)
    # T0's cards on 1-5 March are j = 0..4 (the F-cards themselves) and j = 20..24
    assert risk.get_column("card_token").to_list() == [f"c0_{j}" for j in range(20, 25)]
    assert set(risk.get_column("terminal_id")) == {tid(0)}
    assert risk.columns == [
        "terminal_id",
        "card_token",
        "card_bin",
        "card_last4",
        "first_seen",
        "last_seen",
    ]
    assert risk.row(0, named=True)["card_last4"] == "0020"


def test_statistics_helpers():
    assert binomial_tail(np.array([0, 3]), np.array([10, 3]), 0.5).tolist() == [1.0, 0.125]
    # hand BH: p = (0.001, 0.02, 0.04, 0.5), m = 4 -> (0.004, 0.04, 0.0533, 0.5)
    q = bh_adjust(np.array([0.04, 0.001, 0.5, 0.02]))
    np.testing.assert_allclose(q, [0.04 * 4 / 3, 0.004, 0.5, 0.04])
    with pytest.raises(ValueError, match="unknown keys"):
        CompromiseParams.from_config({"card_compromise": {"min_card": 3}})


def test_terminals_sharing_the_cpps_cards_are_explained_away():
    # four of T0's compromised cards also shop at T1 (their owners' other usual terminal)
    txns = background()
    for j in range(4):
        txns.append(
            {
                "txn_id": f"n{j}",
                "terminal_id": tid(1),
                "card_token": f"c0_{j}",
                "card_bin": "622202",
                "card_last4": f"{j:04d}",
                "txn_time": datetime(2024, 3, 10, 18, j),
            }
        )
    res, _, _ = run(txns, standard_reports())
    assert res.detections.get_column("terminal_id").to_list() == [tid(0)]
    t1 = res.stats.filter(pl.col("terminal_id") == tid(1)).row(0, named=True)
    assert t1["k"] == 1 and not t1["flagged"]  # only its own c1_0 is left to explain
    # judged alone, T1 would pass every threshold: 5 F-cards of 44 at a 1.5 % base rate
    assert binomial_tail(np.array([5]), np.array([44]), 12 / 800)[0] < 0.05 * 2 / 20
