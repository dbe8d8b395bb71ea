"""Terminal-day aggregates, evidence, policy frame and peer features on tiny frames."""

from __future__ import annotations

import importlib.util
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features.daily import AGGREGATE_COLUMNS, terminal_day
from features.policy import policy_frame, policy_row
from features.schema import TABLES, TERMINAL_DAY_AGGREGATES
from features.transactions import enrich_transactions
from models.config import load_config

_spec = importlib.util.spec_from_file_location("_frames", Path(__file__).with_name("_frames.py"))
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

CFG = load_config()


def day_of(txns, registry=None, policies=None):
    registry = F.registry() if registry is None else registry
    pol = policy_frame(policies or {}, CFG["default_policy"])
    return terminal_day(enrich_transactions(txns.lazy(), registry.lazy(), pol, CFG), CFG).collect()


def test_terminal_day_table_matches_the_aggregates():
    cols = [c.name for c in TABLES["terminal_day"][0]]
    assert set(AGGREGATE_COLUMNS) <= set(cols)
    assert set(TERMINAL_DAY_AGGREGATES) - set(AGGREGATE_COLUMNS) == {"n_implausible_time"}
    d = day_of(F.txns(5))
    assert set(AGGREGATE_COLUMNS) <= set(d.columns)


def test_counts_shares_and_amounts():
    t = F.txns(
        4,
        amount_minor=[10000, 20000, 1234, 5000],
        card_type=["credit", "debit", "credit", "credit"],
        response_code=["00", "00", "00", "51"],
        card_token=["a", "a", "b", "c"],
    )
    d = day_of(t)
    got = d.select(
        "n_txn",
        "n_approved",
        "n_cap",
        "cap_amount",
        "round_share",
        "credit_share",
        "n_cards",
        "max_same_card",
        "decline_rate",
        "decline_funds_rate",
        "amount_max",
    )
    want = pl.DataFrame(
        {
            "n_txn": [4],
            "n_approved": [3],
            "n_cap": [3],
            "cap_amount": [31234],
            "round_share": [2 / 3],
            "credit_share": [2 / 3],
            "n_cards": [3],
            "max_same_card": [2],
            "decline_rate": [0.25],
            "decline_funds_rate": [0.25],
            "amount_max": [20000],
        },
        schema=got.schema,
    )
    assert_frame_equal(got, want)


def test_evidence_is_time_ordered_and_capped():
    t = F.txns(60, step_s=30, mcc="4829")
    ev = day_of(t).get_column("ev_mcc_mismatch")[0].to_list()
    assert len(ev) == 50
    assert ev == sorted(ev)


def test_card_testing_window_and_sequential_cards():
    n = 12
    t = F.txns(
        n,
        step_s=120,
        amount_minor=100,
        response_code=["14", "05", "00"] * 4,
        card_bin="622848",
        card_last4=[f"{1000 + 3 * i:04d}" for i in range(n)],
    )
    d = day_of(t).row(0, named=True)
    assert d["testing_cards"] >= 10
    assert d["testing_decline_rate"] == pytest.approx(2 / 3, abs=0.05)
    assert d["n_sequential_cards"] == n
    assert len(d["ev_card_testing"]) == n


def test_daily_caps_count_from_the_breaching_row():
    t = F.txns(6, amount_minor=[400000] * 6)  # daily cap 2 000 000 fen = 5 x 400 000
    d = day_of(t).row(0, named=True)
    assert d["n_over_daily_amount"] == 1
    assert d["ev_trial_limit_breach"] == ["T0000001-00005"]


def test_policy_row_semantics():
    row = policy_row("p", {"business_hours": ["18:00", "02:00"], "geofence_m": {"fixed_pos": 300}})
    assert (row["hours_start_min"], row["hours_end_min"]) == (1080, 120)
    assert row["max_txn_amount_minor"] is None  # absent key = no limit
    assert row["geofence_m_fixed_pos"] == 300 and row["geofence_m_mobile_pos"] is None
    with pytest.raises(ValueError, match="unknown keys"):
        policy_row("p", {"max_amount": 1})
    with pytest.raises(ValueError, match="HH:MM"):
        policy_row("p", {"business_hours": ["7am", "23:00"]})


def test_unknown_policy_falls_back_to_default():
    d = day_of(
        F.txns(3, txn_time=[datetime(2026, 3, 10, 3, 0)] * 3),
        registry=F.registry(policy_id="nope"),
    )
    assert d["policy_key"][0] == "default"
    assert d["n_outside_hours"][0] == 3
