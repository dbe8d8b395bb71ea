"""Clone and relocation checks from STAN counters and telemetry: fire / do not fire."""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from pathlib import Path

import polars as pl

from features.daily import terminal_day
from features.events import event_day_features, network_baseline, with_telemetry
from features.policy import policy_frame
from features.schema import TERMINAL_EVENTS, polars_schema
from features.transactions import enrich_transactions
from models.config import load_config
from models.rules.engine import detect

_path = Path(__file__).parents[2] / "features" / "_frames.py"
_spec = importlib.util.spec_from_file_location("_frames", _path)
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

CFG = load_config()


def _day(txns: pl.DataFrame) -> pl.DataFrame:
    return F.terminal_day_of(txns, CFG)


def _clone_reasons(txns: pl.DataFrame) -> list[str]:
    det = detect(_day(txns).lazy(), CFG).collect().filter(pl.col("behaviour") == "cloned_terminal")
    return [r["code"] for rs in det.get_column("reasons").to_list() for r in rs]


def _stans(values) -> list[str]:
    return [f"{v:06d}" for v in values]


def test_two_interleaved_stan_counters_without_serial_fire():
    # A mobile POS that reports no device serial: two counters (505xxx, 715xxx) alternate.
    a, b = iter(range(505_001, 505_100)), iter(range(715_001, 715_100))
    stan = [next(a) if i % 3 else next(b) for i in range(18)]
    txns = F.txns(18, stan=_stans(stan), device_serial=None)
    day = _day(txns)
    assert day.get_column("n_stan_counters").to_list() == [2]
    assert day.get_column("n_stan_returns").item() >= CFG["cloned_terminal"]["min_stan_returns"]
    assert "stan_counters" in _clone_reasons(txns)


def test_one_device_reset_wrap_and_late_message_do_not_fire():
    # counter wraps round, then the device reboots and restarts at 1, and one
    # store-and-forward message with an older STAN arrives late
    stan = [999_997, 999_998, 999_999, 0, 1, 2, 3, 1, 2, 3, 4, 5, 4, 6, 7]
    txns = F.txns(len(stan), stan=_stans(stan), device_serial=None)
    day = _day(txns)
    assert day.get_column("n_stan_returns").item() < CFG["cloned_terminal"]["min_stan_returns"]
    assert "stan_counters" not in _clone_reasons(txns)


def test_daily_dhcp_ip_change_is_not_a_clone():
    # one device, one counter; its IP changes once in the day (DHCP lease renewal)
    ips = ["10.0.0.1"] * 10 + ["10.0.7.9"] * 10
    txns = F.txns(20, ip_address=ips)
    assert _clone_reasons(txns) == []


def test_reversal_with_the_original_stan_is_not_a_second_counter():
    stan = list(range(100, 112))
    kinds = ["purchase"] * 12
    # two reversals sent later carry the STANs of the purchases they reverse
    stan[5], kinds[5] = 101, "reversal"
    stan[9], kinds[9] = 103, "reversal"
    txns = F.txns(12, stan=_stans(stan), txn_type=kinds)
    assert _day(txns).get_column("n_stan_returns").item() == 0


# ---------------------------------------------------------------------------
# Telemetry (terminal_events): devices signing on, located events, network moves
# ---------------------------------------------------------------------------

# terminal_events input columns (features.schema) plus the id ingest derives
EVENT_SCHEMA = {"event_id": pl.String, **polars_schema(TERMINAL_EVENTS.columns)}


def _events(rows: list[dict]) -> pl.LazyFrame:
    full = [
        {
            "event_id": f"e{i}",
            "terminal_id": "T0000001",
            "event_type": "heartbeat",
            "device_serial": "SNT0000001",
            "lat": None,
            "lon": None,
            "cell_id": "460-00-1234-5678",
            "ip_address": "10.0.0.1",
            **r,
        }
        for i, r in enumerate(rows)
    ]
    return pl.LazyFrame(full, schema=EVENT_SCHEMA)


def _history(days: int, cell: str, ip: str) -> pl.LazyFrame:
    rows = [
        {
            "terminal_id": "T0000001",
            "event_date": (F.T0 - timedelta(days=d)).date(),
            "cell_id": c,
            "ip_address": a,
            "n": n,
        }
        for d in range(1, days + 1)
        # each day: mostly the usual cell and address, one stray hand-over elsewhere
        for c, a, n in ((cell, ip, 5), ("460-00-7777-1", "192.168.0.9", 1))
    ]
    return pl.LazyFrame(rows)


def _telemetry_reasons(today: list[dict], history=None, kind="fixed_pos") -> dict[str, list]:
    txns = F.txns(10)
    reg = F.registry(["T0000001"], terminal_kind=kind)
    pol = policy_frame({}, CFG["default_policy"])
    day = terminal_day(enrich_transactions(txns.lazy(), reg.lazy(), pol, CFG), CFG).collect()
    day = day.with_columns(pl.lit(0, dtype=pl.Int64).alias("n_implausible_time"))
    base = None if history is None else network_baseline(history)
    tel = event_day_features(_events(today), reg.lazy(), base).collect()
    day = with_telemetry(day, tel, CFG)
    det = detect(day.lazy(), CFG).collect()
    return {r["behaviour"]: [x["code"] for x in r["reasons"]] for r in det.iter_rows(named=True)}


def _at(minutes: int):
    return F.T0 + timedelta(minutes=minutes)


def test_two_serials_alternating_in_telemetry_is_a_clone():
    serials = ["SNT0000001", "SNCLONE001", "SNT0000001", "SNCLONE001"]
    today = [{"event_time": _at(30 * i), "device_serial": s} for i, s in enumerate(serials)]
    got = _telemetry_reasons(today)
    assert "two_devices_signed_on" in got.get("cloned_terminal", [])


def test_device_replaced_once_is_not_a_clone():
    serials = ["SNT0000001", "SNT0000001", "SNNEW00001", "SNNEW00001"]
    today = [{"event_time": _at(30 * i), "device_serial": s} for i, s in enumerate(serials)]
    assert "cloned_terminal" not in _telemetry_reasons(today)


def test_located_events_far_from_the_registered_address_are_a_relocation():
    today = [
        {"event_time": _at(30 * i), "event_type": "location", "lat": F.LAT + 0.5, "lon": F.LON}
        for i in range(4)
    ]
    assert "telemetry_outside_geofence" in _telemetry_reasons(today).get("relocation", [])
    near = [{**r, "lat": F.LAT + 0.001} for r in today]
    assert "relocation" not in _telemetry_reasons(near)


def test_fixed_terminal_on_a_new_cell_area_and_ip_network_has_moved():
    history = _history(5, "460-00-1234-5678", "10.0.0.1")
    moved = [{"event_time": _at(60), "cell_id": "460-00-9999-1111", "ip_address": "172.16.3.4"}]
    assert "network_moved" in _telemetry_reasons(moved, history).get("relocation", [])
    # the same on a mobile POS (geofence 20 km) is normal use
    assert "relocation" not in _telemetry_reasons(moved, history, kind="mobile_pos")
    # too little history to know the usual attachment
    assert "relocation" not in _telemetry_reasons(
        moved, _history(2, "460-00-1234-5678", "10.0.0.1")
    )


def test_daily_dhcp_change_or_cell_change_alone_is_not_a_move():
    history = _history(5, "460-00-1234-5678", "10.0.0.1")
    dhcp = [{"event_time": _at(60), "ip_address": "10.0.200.7"}]  # same /16, same cell area
    assert "relocation" not in _telemetry_reasons(dhcp, history)
    new_isp = [{"event_time": _at(60), "ip_address": "172.16.3.4"}]  # new network, same area
    assert "relocation" not in _telemetry_reasons(new_isp, history)
    new_cell = [{"event_time": _at(60), "cell_id": "460-00-9999-1111"}]  # area only
    assert "relocation" not in _telemetry_reasons(new_cell, history)


# ---------------------------------------------------------------------------
# Fallback reads repeated over days on a low-volume terminal
# ---------------------------------------------------------------------------


def _fallback_reasons(entry_modes: list[str], fallback_w: int) -> list[str]:
    txns = F.txns(len(entry_modes), entry_mode=entry_modes)
    day = _day(txns).with_columns(pl.lit(fallback_w, dtype=pl.Int64).alias("n_fallback_w"))
    det = detect(day.lazy(), CFG).collect().filter(pl.col("behaviour") == "fallback_abuse")
    return [r["code"] for rs in det.get_column("reasons").to_list() for r in rs]


def test_fallback_repeated_over_the_week_fires_on_a_day_with_one():
    # one fallback read today (below the daily minimum of 3) but 3 in the 7-day window
    assert "repeated_fallback" in _fallback_reasons(["80", "05", "05", "07"], fallback_w=3)


def test_single_stray_fallback_in_a_week_does_not_fire():
    assert _fallback_reasons(["80", "05", "05", "07"], fallback_w=1) == []
    # a fallback-free day does not fire, whatever the week held
    assert _fallback_reasons(["05", "05", "07", "07"], fallback_w=3) == []


def test_clone_used_far_away_is_not_a_relocation_of_the_terminal():
    # the registered device stays home; a clone with another serial is used 100 km away
    n = 20
    serials = ["SNT0000001", "SNCLONE001"] * (n // 2)
    lats = [F.LAT, F.LAT + 1.0] * (n // 2)
    txns = F.txns(n, device_serial=serials, terminal_lat=lats)
    got = detect(_day(txns).lazy(), CFG).collect()
    assert "cloned_terminal" in set(got["behaviour"])
    assert "relocation" not in set(got["behaviour"])
    # the registered device itself away from home is a relocation
    moved = F.txns(n, device_serial="SNT0000001", terminal_lat=F.LAT + 1.0)
    assert "relocation" in set(detect(_day(moved).lazy(), CFG).collect()["behaviour"])


# ---------------------------------------------------------------------------
# Malfunction on a busy terminal: all three symptom families, rates below thresholds
# ---------------------------------------------------------------------------


def _malfunction_codes(tech: int, rev: int, dups: int) -> list[str]:
    txns = F.txns(20, response_code=["91"] + ["00"] * 19)  # a symptom today
    day = _day(txns).with_columns(
        pl.lit(600, dtype=pl.Int64).alias("n_txn_w"),
        pl.lit(580, dtype=pl.Int64).alias("n_cap_w"),
        pl.lit(tech, dtype=pl.Int64).alias("n_technical_w"),
        pl.lit(rev, dtype=pl.Int64).alias("n_reversal_w"),
        pl.lit(dups, dtype=pl.Int64).alias("n_stan_repeat_w"),
        pl.lit(0, dtype=pl.Int64).alias("n_stan_conflict_w"),
        pl.lit(0, dtype=pl.Int64).alias("n_implausible_time_w"),
    )
    det = detect(day.lazy(), CFG).collect().filter(pl.col("behaviour") == "malfunction")
    return [r["code"] for rs in det.get_column("reasons").to_list() for r in rs]


def test_three_symptom_families_on_a_busy_terminal_fire():
    # 14 technical declines (2.3%), 15 reversals (2.6%), 4 STAN reuses in 7 days
    assert "symptom_families" in _malfunction_codes(14, 15, 4)


def test_two_symptom_families_with_low_rates_do_not_fire():
    # an outage: technical declines and reversals, no STAN reuse
    assert _malfunction_codes(14, 15, 0) == []
    assert _malfunction_codes(14, 0, 4) == []
