"""Per-transaction signals on tiny hand-made frames."""

from __future__ import annotations

import importlib.util
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_series_equal

from features.geo import haversine_km
from features.policy import policy_frame
from features.transactions import enrich_transactions
from models.config import load_config

_spec = importlib.util.spec_from_file_location("_frames", Path(__file__).with_name("_frames.py"))
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

CFG = load_config()
POLICIES = policy_frame({}, CFG["default_policy"])


def enrich(txns: pl.DataFrame, registry: pl.DataFrame, policies=POLICIES) -> pl.DataFrame:
    return enrich_transactions(txns.lazy(), registry.lazy(), policies, CFG).collect()


def test_haversine_shanghai_beijing():
    d = pl.select(
        haversine_km(pl.lit(31.2304), pl.lit(121.4737), pl.lit(39.9042), pl.lit(116.4074))
    ).item()
    assert d == pytest.approx(1067, abs=5)


def test_registry_row_in_force_is_latest_not_after_the_transaction():
    reg = pl.concat(
        [
            F.registry(),
            F.registry(status="suspended", updated_at=datetime(2026, 3, 10, 11, 0)),
        ]
    )
    out = enrich(F.txns(12, step_s=600), reg)  # 10:00 .. 11:50
    reasons = out.get_column("unregistered_reason")
    assert reasons.head(6).is_null().all()  # before 11:00 the active row is in force
    assert (reasons.tail(6) == "suspended").all()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"activated_at": None}, "before_activation"),
        ({"activated_at": datetime(2026, 3, 10, 12, 0)}, "before_activation"),
        ({"trial_start": date(2026, 3, 11)}, "before_trial"),
        ({"trial_end": date(2026, 3, 9)}, "after_trial"),
        ({"status": "terminated"}, "terminated"),
        ({"updated_at": datetime(2026, 3, 11)}, "before_registration"),
    ],
)
def test_unregistered_reasons(overrides, reason):
    out = enrich(F.txns(3), F.registry(**overrides))
    assert (out.get_column("unregistered_reason") == reason).all()


def test_unknown_terminal_is_judged_under_default_policy():
    out = enrich(F.txns(2, terminal_id="ZZZZZZZZ"), F.registry())
    assert (out.get_column("unregistered_reason") == "unknown_terminal").all()
    assert (out.get_column("policy_key") == "default").all()
    assert out.get_column("max_txn_amount_minor").to_list() == [500000, 500000]


def test_business_hours_crossing_midnight():
    pol = policy_frame({"night": {"business_hours": ["18:00", "02:00"]}}, CFG["default_policy"])
    times = [datetime(2026, 3, 10, h, m) for h, m in [(17, 59), (18, 0), (1, 59), (2, 0), (12, 0)]]
    t = F.txns(5, txn_time=times)
    out = enrich(t, F.registry(policy_id="night"), pol).sort("txn_time")
    by_time = dict(zip(out.get_column("txn_time"), out.get_column("outside_hours"), strict=True))
    assert [by_time[x] for x in times] == [True, False, False, True, True]


def test_device_serial_back_switch_and_per_device_travel():
    serials = ["A", "A", "B", "A", "B", "B"]
    lat = [F.LAT, F.LAT, 39.9, F.LAT, 39.9, 39.9]
    out = enrich(F.txns(6, step_s=60, device_serial=serials, terminal_lat=lat), F.registry())
    assert out.get_column("serial_switch").to_list() == [False, False, True, True, True, False]
    assert out.get_column("serial_back_switch").to_list() == [
        False,
        False,
        False,
        True,
        True,
        False,
    ]
    # Two devices far apart are a clone, not a terminal travelling at 60 000 km/h.
    assert not out.get_column("impossible_hop").any()


def test_impossible_travel_of_one_device():
    lat = [F.LAT, F.LAT, 39.9, 39.9]
    out = enrich(F.txns(4, step_s=600, terminal_lat=lat), F.registry())
    assert out.get_column("impossible_hop").to_list() == [False, False, True, False]
    assert out.get_column("hop_speed_kmh")[2] > 3000


def test_split_sale_counts_approved_sales_only():
    card = ["c1"] * 4
    rc = ["05", "05", "00", "00"]
    out = enrich(F.txns(4, step_s=60, card_token=card, response_code=rc), F.registry())
    assert not out.get_column("same_card_burst").any()
    out = enrich(F.txns(4, step_s=60, card_token=card), F.registry())
    assert_series_equal(
        out.get_column("same_card_burst"),
        pl.Series("same_card_burst", [False, False, True, True]),
    )


def test_refund_matching():
    t = F.txns(
        3,
        txn_type=["purchase", "refund", "refund"],
        original_txn_id=[None, "T0000001-00000", "nope"],
    )
    orig = pl.DataFrame(
        {
            "orig_terminal_id": [None, "T0000001", None],
            "orig_card_token": [None, None, None],
            "orig_amount_minor": [None, 10**6, None],
        },
        schema={
            "orig_terminal_id": pl.String,
            "orig_card_token": pl.String,
            "orig_amount_minor": pl.Int64,
        },
    )
    out = enrich(pl.concat([t, orig], how="horizontal"), F.registry())
    assert out.get_column("refund_unmatched").to_list() == [False, False, True]


def test_mcc_mismatch_against_registry_and_mid():
    out = enrich(
        F.txns(
            3,
            mcc=["5411", "5812", "5411"],
            merchant_id=["100310054110000", "100310054110000", "100310058120000"],
        ),
        F.registry(),
    )
    assert out.get_column("mcc_mismatch").to_list() == [False, True, True]
