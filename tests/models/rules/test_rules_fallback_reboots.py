"""Chip cards swiped at a terminal that reads them by chip (fallback) and repeated reboots."""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from pathlib import Path

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from features.daily import terminal_day
from features.events import event_day_features, with_telemetry
from features.policy import policy_frame
from features.schema import TERMINAL_EVENTS, polars_schema
from features.transactions import enrich_transactions, fallback_entry
from models.config import load_config
from models.rules.engine import detect

_path = Path(__file__).parents[2] / "features" / "_frames.py"
_spec = importlib.util.spec_from_file_location("_frames", _path)
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

CFG = load_config()


def _n_fallback(txns: pl.DataFrame) -> int:
    return F.terminal_day_of(txns, CFG).get_column("n_fallback").item()


# ---------------------------------------------------------------------------
# Fallback: a stripe read of a card the same terminal reads by chip
# ---------------------------------------------------------------------------


def test_swipe_of_a_card_read_by_chip_here_today_is_a_fallback():
    # card A: chip read, later swiped (02); card B: swiped (90) and then read by chip
    txns = F.txns(4, entry_mode=["05", "02", "90", "07"], card_token=["A", "A", "B", "B"])
    assert _n_fallback(txns) == 2


def test_swipe_of_a_stripe_only_card_is_not_a_fallback():
    # cards never read by chip at this terminal: stripe-only cards, plain stripe reads
    txns = F.txns(4, entry_mode=["02", "90", "05", "07"])
    assert _n_fallback(txns) == 0


def test_card_read_by_chip_only_at_another_terminal_does_not_count():
    # card A is read by chip at T0000002 and swiped at T0000001 (a counterfeit copy of
    # its stripe looks the same): no fallback at either terminal
    here = F.txns(2, entry_mode=["90", "05"], card_token=["A", "C"])
    there = F.txns(1, terminal_id="T0000002", entry_mode=["05"], card_token=["A"])
    day = F.terminal_day_of(pl.concat([here, there]), CFG).sort("terminal_id")
    assert day.get_column("n_fallback").to_list() == [0, 0]


@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["T1", "T2"]),
            st.sampled_from(["A", "B", "C", None]),
            st.sampled_from([0, 1]),
            st.sampled_from(["05", "07", "02", "90", "80", "01", "91"]),
        ),
        max_size=30,
    )
)
@settings(max_examples=150, deadline=None)
def test_fallback_entry_equals_a_plain_loop(rows):
    """Reference: 80/01, or 02/90 of a card the same terminal read by 05/07 that day."""
    df = pl.DataFrame(
        {
            "terminal_id": [r[0] for r in rows],
            "card_token": [r[1] for r in rows],
            "local_date": [F.T0.date() + timedelta(days=r[2]) for r in rows],
            "entry_mode": [r[3] for r in rows],
        },
        schema={
            "terminal_id": pl.String,
            "card_token": pl.String,
            "local_date": pl.Date,
            "entry_mode": pl.String,
        },
    )
    got = df.select(fallback_entry(["80", "01"], ["02", "90"], ["05", "07"])).to_series()
    chip = {(t, c, d) for t, c, d, m in rows if m in ("05", "07") and c is not None}
    want = [
        m in ("80", "01") or (m in ("02", "90") and c is not None and (t, c, d) in chip)
        for t, c, d, m in rows
    ]
    assert got.to_list() == want


def test_declined_swipe_is_not_counted():
    txns = F.txns(2, entry_mode=["05", "90"], card_token=["A", "A"], response_code=["00", "05"])
    assert _n_fallback(txns) == 0


def test_three_chip_card_swipes_in_a_week_fire_fallback_abuse():
    txns = F.txns(4, entry_mode=["05", "90", "07", "07"], card_token=["A", "A", "B", "C"])
    day = F.terminal_day_of(txns, CFG).with_columns(
        pl.lit(3, dtype=pl.Int64).alias("n_fallback_w")
    )
    det = detect(day.lazy(), CFG).collect().filter(pl.col("behaviour") == "fallback_abuse")
    assert det.height == 1
    assert [r["code"] for r in det.get_column("reasons").item()] == ["repeated_fallback"]


# ---------------------------------------------------------------------------
# Malfunction: repeated reboots on a day with a failing message
# ---------------------------------------------------------------------------

# terminal_events input columns (features.schema) plus the id ingest derives
EVENT_SCHEMA = {"event_id": pl.String, **polars_schema(TERMINAL_EVENTS.columns)}


def _malfunction(reboots: int, response_codes: list[str]) -> dict | None:
    txns = F.txns(len(response_codes), response_code=response_codes)
    reg = F.registry(["T0000001"])
    pol = policy_frame({}, CFG["default_policy"])
    day = terminal_day(enrich_transactions(txns.lazy(), reg.lazy(), pol, CFG), CFG).collect()
    day = day.with_columns(pl.lit(0, dtype=pl.Int64).alias("n_implausible_time"))
    rows = [
        {
            "event_id": f"r{i}",
            "terminal_id": "T0000001",
            "event_time": F.T0 + timedelta(minutes=45 * i),
            "event_type": "reboot",
            "device_serial": "SNT0000001",
            "lat": None,
            "lon": None,
            "cell_id": None,
            "ip_address": None,
        }
        for i in range(reboots)
    ] + [
        {
            "event_id": "s0",
            "terminal_id": "T0000001",
            "event_time": F.T0 - timedelta(hours=2),
            "event_type": "sign_on",
            "device_serial": "SNT0000001",
            "lat": None,
            "lon": None,
            "cell_id": None,
            "ip_address": None,
        }
    ]
    tel = event_day_features(pl.LazyFrame(rows, schema=EVENT_SCHEMA), reg.lazy()).collect()
    day = with_telemetry(day, tel, CFG)
    assert day.get_column("n_reboot").item() == reboots
    det = detect(day.lazy(), CFG).collect().filter(pl.col("behaviour") == "malfunction")
    return det.row(0, named=True) if det.height else None


def test_repeated_reboots_with_a_technical_decline_are_a_malfunction():
    n = int(CFG["malfunction"]["min_reboots"])
    got = _malfunction(n, ["91"] + ["00"] * 5)
    assert got is not None
    assert [r["code"] for r in got["reasons"]] == ["repeated_reboots"]
    assert {f"r{i}" for i in range(n)} <= set(got["evidence"])


def test_reboots_without_a_failing_message_or_below_the_minimum_do_not_fire():
    n = int(CFG["malfunction"]["min_reboots"])
    # restarts alone (a power problem at the shop) with every message approved
    assert _malfunction(n + 5, ["00"] * 6) is None
    # the scheduled daily restart plus one more, on a day with one technical decline
    assert _malfunction(n - 1, ["91"] + ["00"] * 5) is None
