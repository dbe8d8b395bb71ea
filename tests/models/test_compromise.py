"""Common point of compromise on hand-made scenarios (domain.md §2.1)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from scipy.stats import binom

from features.schema import DETECTION_SCHEMA
from models.compromise import at_risk_cards, score_card_compromise
from models.compromise.inputs import (
    match_fraud_transactions,
    terminal_card_counts,
    visit_day_counts,
)
from models.compromise.params import CompromiseParams
from models.compromise.scan import bh_adjust, binomial_tail, log_binomial_tail

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
    counts, _ = terminal_card_counts(tx, *params.window(as_of))
    days = visit_day_counts(tx, *params.window(as_of))
    return score_card_compromise(rp, tx, counts, days, as_of, params), tx, rp


def month(t0_fraud_days: list[int]) -> tuple[list[dict], list[dict]]:
    """20 terminals trade every day of March 1-30: card j of terminal t on day 1 + j % 30.

    Every day one card of T1..T19 is later defrauded (an even background rate); T0's
    F-cards are its card of each day in ``t0_fraud_days``. All fraud is on 31 March.
    """
    txns = []
    for t in range(20):
        for j in range(60):
            txns.append(
                {
                    "txn_id": f"x{t}_{j}",
                    "terminal_id": tid(t),
                    "card_token": f"c{t}_{j}",
                    "card_bin": "622202",
                    "card_last4": f"{j:04d}",
                    "txn_time": datetime(2024, 3, 1 + j % 30, 12, 0),
                }
            )
    cards = [f"c{1 + d % 19}_{d + 30}" for d in range(30)]
    cards += [f"c0_{day - 1}" for day in t0_fraud_days]
    fraud = datetime(2024, 3, 31, 12, 0)
    return txns, [report(c, fraud, datetime(2024, 4, 5)) for c in cards]


def test_week_long_compromise_is_judged_over_its_week():
    txns, reports = month(list(range(11, 18)))
    res, tx, rp = run(txns, reports)
    t0 = res.stats.filter(pl.col("terminal_id") == tid(0)).row(0, named=True)
    # the multiscale scan: the 8-day window from the first F-card day covers the week
    assert (t0["period_start"], t0["period_end"]) == (date(2024, 3, 11), date(2024, 3, 18))
    # 7 F-cards among the 16 cards T0 saw on 11-18 March (not its 60 of the month);
    # the network then: 7 + 8 F-cards of 20 x 2 x 8 = 320 cards
    assert t0["k"] == 7 and t0["n"] == 16
    assert t0["base_rate"] == pytest.approx(15 / 320)
    assert t0["lift"] == pytest.approx(7 / (16 * 15 / 320))  # 9.3x; 3.8x over the month
    # the scan could try T0's 30 trading days x 6 lengths (1, 2, ..., 32 days): 180
    # windows, not the 465 of every [a, b] (nearly the same windows, paid for again)
    assert t0["n_windows"] == 180
    assert t0["p_value"] == pytest.approx(180 * binom.sf(6, 16, 15 / 320))
    assert res.detections.get_column("terminal_id").to_list() == [tid(0)]
    det = res.detections.row(0, named=True)
    assert res.detections.schema == DETECTION_SCHEMA
    assert det["day"] == AS_OF and 0.9 < det["score"] <= 1.0
    assert sorted(det["evidence"]) == sorted(f"x0_{d - 1}" for d in range(11, 18))
    codes = [r["code"] for r in det["reasons"]]
    assert codes == ["cpp_fraud_cards", "cpp_lift", "cpp_significance", "cpp_period"]
    assert "7 of 16 cards seen here from 2024-03-11 to 2024-03-18" in det["reasons"][0]["text"]
    # the at-risk list is the other cards of the period, the same window as n_t
    risk = at_risk_cards(tx, res.periods, rp)
    others = [f"c0_{d + 29}" for d in range(11, 19)] + ["c0_17"]
    assert risk.get_column("card_token").to_list() == sorted(others)


def test_fraud_cards_spread_over_the_month_gain_no_lift():
    txns, reports = month([1, 6, 11, 16, 21, 26, 30])
    res, _, _ = run(txns, reports)
    t0 = res.stats.filter(pl.col("terminal_id") == tid(0)).row(0, named=True)
    # the whole month is the window: n and the base rate are the month's, as before
    assert (t0["period_start"], t0["period_end"]) == (date(2024, 3, 1), date(2024, 3, 30))
    assert t0["k"] == 7 and t0["n"] == 60
    assert t0["lift"] == pytest.approx(7 / (60 * 37 / 1200))
    assert not t0["flagged"] and res.detections.height == 0


def test_one_card_is_not_a_cpp():
    txns, reports = month([12])
    res, _, _ = run(txns, reports)
    t0 = res.stats.filter(pl.col("terminal_id") == tid(0)).row(0, named=True)
    assert t0["k"] == 1 and not t0["flagged"]
    assert res.detections.height == 0


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


def test_statistics_helpers():
    assert binomial_tail(np.array([0, 3]), np.array([10, 3]), 0.5).tolist() == [1.0, 0.125]
    # hand BH: p = (0.001, 0.02, 0.04, 0.5), m = 4 -> (0.004, 0.04, 0.0533, 0.5)
    q = bh_adjust(np.array([0.04, 0.001, 0.5, 0.02]))
    np.testing.assert_allclose(q, [0.04 * 4 / 3, 0.004, 0.5, 0.04])
    with pytest.raises(ValueError, match="unknown keys"):
        CompromiseParams.from_config({"card_compromise": {"min_card": 3}})


def test_scan_multiplicity_and_bh_control_a_short_burst():
    # 3 F-cards on 11-13 March: 3 of the 8 cards of 11-14 March (the 4-day window) at a
    # 4.4 % rate is unlikely alone (0.5 %) ...
    txns, reports = month([11, 12, 13])
    res, _, _ = run(txns, reports)
    t0 = res.stats.filter(pl.col("terminal_id") == tid(0)).row(0, named=True)
    assert (t0["period_start"], t0["period_end"]) == (date(2024, 3, 11), date(2024, 3, 14))
    assert (t0["k"], t0["n"]) == (3, 8)
    tail = binom.sf(2, 8, t0["base_rate"])
    assert tail < 0.005
    # ... but it is one of the 180 windows T0's month offers: not a discovery
    assert t0["p_value"] == pytest.approx(min(1.0, 180 * tail))
    assert t0["q_value"] > 0.05 and res.detections.height == 0


def test_reports_not_yet_known_are_ignored():
    txns, reports = month(list(range(11, 18)))
    late = [
        dict(r, reported_at=datetime(2024, 4, 12, 9)) if r["card_token"].startswith("c0_") else r
        for r in reports
    ]
    res, _, _ = run(txns, late, as_of=AS_OF)
    assert res.detections.height == 0
    assert res.stats.filter(pl.col("terminal_id") == tid(0))["k"].item() == 0
    later, _, _ = run(txns, late, as_of=date(2024, 4, 12))
    assert later.detections.get_column("terminal_id").to_list() == [tid(0)]


def test_terminals_sharing_the_cpps_cards_are_explained_away():
    # six of T0's compromised cards also shop at T1 (their owners' other usual terminal)
    txns, reports = month(list(range(11, 18)))
    for j in range(6):
        txns.append(
            {
                "txn_id": f"n{j}",
                "terminal_id": tid(1),
                "card_token": f"c0_{10 + j}",
                "card_bin": "622202",
                "card_last4": f"{10 + j:04d}",
                "txn_time": datetime(2024, 3, 20, 18, j),
            }
        )
    res, _, _ = run(txns, reports)
    assert res.detections.get_column("terminal_id").to_list() == [tid(0)]
    t1 = res.stats.filter(pl.col("terminal_id") == tid(1)).row(0, named=True)
    # T1 saw 8 F-cards; only its own background ones (days 1 and 20) are left to explain
    assert t1["k"] <= 2 and not t1["flagged"]


def test_log_tail_orders_tails_that_underflow():
    k, n = np.array([3, 50, 600, 900]), np.array([24, 300, 1000, 1000])
    log_tail = log_binomial_tail(k, n, 0.01)
    # where the tail is representable it is log(sf) ...
    np.testing.assert_allclose(log_tail[:2], np.log(binom.sf(k[:2] - 1, n[:2], 0.01)))
    # ... and where sf underflows to 0 it still orders the windows (900 of 1000 is rarer)
    assert binom.sf(599, 1000, 0.01) == 0.0 and np.isfinite(log_tail).all()
    assert log_tail[3] < log_tail[2] < log_tail[1] < log_tail[0] < 0
    # the bound is tight: within log(1 / (1 - r)) of the first term
    assert log_tail[2] - binom.logpmf(600, 1000, 0.01) < 1e-2


def test_a_blatant_cpp_is_judged_over_its_compromise_not_the_month():
    # T0 sees 100 cards a day, 200 terminals 4 a day; 90 of T0's cards a day on 11-17
    # March were compromised (630 F-cards: every window around them has a tail far below
    # 1e-300) and one card a day otherwise, as at the other terminals. Compared in log
    # space the week, not the month (more F-cards but diluted), is the period.
    txns = []
    for t in range(201):
        per_day = 100 if t == 0 else 4
        for j in range(30 * per_day):
            txns.append(
                {
                    "txn_id": f"x{t}_{j}",
                    "terminal_id": tid(t),
                    "card_token": f"c{t}_{j}",
                    "card_bin": "622202",
                    "card_last4": "0000",
                    "txn_time": datetime(2024, 3, 1 + j // per_day, 12, 0),
                }
            )
    week = [f"c0_{100 * (d - 1) + i}" for d in range(11, 18) for i in range(90)]
    other = [f"c0_{100 * (d - 1) + 99}" for d in range(1, 31)]
    other += [f"c{1 + d % 200}_{4 * d}" for d in range(30)]
    fraud, known = datetime(2024, 3, 31, 12, 0), datetime(2024, 4, 5)
    res, _, _ = run(txns, [report(c, fraud, known) for c in week + other])
    t0 = res.stats.filter(pl.col("terminal_id") == tid(0)).row(0, named=True)
    assert binom.sf(t0["k"] - 1, t0["n"], t0["base_rate"]) == 0.0  # underflow indeed
    # the 11-17 March week, within the factor-2 length of the multiscale scan
    assert t0["period_start"] <= date(2024, 3, 11) and t0["period_end"] >= date(2024, 3, 17)
    assert (t0["period_end"] - t0["period_start"]).days + 1 <= 14
    assert t0["k"] >= len(week) and t0["flagged"]
