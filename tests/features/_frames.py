"""Tiny hand-made transaction and registry frames for feature and rule tests."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import polars as pl

from features.schema import TERMINALS, TRANSACTIONS, polars_schema, stored_columns

DAY = date(2026, 3, 10)
T0 = datetime(2026, 3, 10, 10, 0, 0)
LAT, LON = 31.2304, 121.4737

TXN_SCHEMA = polars_schema(stored_columns(TRANSACTIONS))
REG_SCHEMA = polars_schema(stored_columns(TERMINALS))


def registry(terminal_ids=("T0000001",), **overrides) -> pl.DataFrame:
    """One registry row per terminal id (active, in trial, fixed POS in Shanghai)."""
    rows = []
    for i, tid in enumerate(terminal_ids):
        row = {
            "terminal_id": tid,
            "merchant_id": f"10031005411{i:04d}",
            "serial_number": f"SN{tid}",
            "merchant_name": "shop",
            "registered_mcc": "5411",
            "registered_lat": LAT,
            "registered_lon": LON,
            "region_code": "310101",
            "terminal_kind": "fixed_pos",
            "terminal_model": "X1",
            "channel_id": "C1",
            "policy_id": "default",
            "activated_at": datetime(2026, 3, 1, 9, 0),
            "trial_start": date(2026, 3, 1),
            "trial_end": date(2026, 5, 31),
            "status": "active",
            "updated_at": datetime(2026, 3, 1, 8, 0),
            "extra": None,
            "file_id": "f",
            "line_no": i + 1,
        }
        row.update(overrides)
        rows.append(row)
    return pl.DataFrame(rows, schema=REG_SCHEMA)


def txns(n=10, terminal_id="T0000001", step_s=600, start=T0, **overrides) -> pl.DataFrame:
    """``n`` ordinary approved chip purchases, one every ``step_s`` seconds, distinct cards.

    ``overrides`` values may be scalars or lists of length ``n``.
    """
    rows = []
    for i in range(n):
        t = start + timedelta(seconds=step_s * i)
        row = {
            "txn_id": f"{terminal_id}-{i:05d}",
            "terminal_id": terminal_id,
            "merchant_id": "100310054110000",
            "txn_time": t,
            "txn_type": "purchase",
            "amount_minor": 3250 + 17 * i,
            "currency": "156",
            "card_token": f"tok{terminal_id}{i:04d}",
            "card_bin": "622202",
            "card_last4": f"{(1000 + 137 * i) % 10000:04d}",
            "card_type": "debit",
            "card_country": "CN",
            "entry_mode": "05",
            "pin_entered": True,
            "mcc": "5411",
            "response_code": "00",
            "stan": f"{i + 1:06d}",
            "rrn": f"{i + 1:012d}",
            "original_txn_id": None,
            "device_serial": f"SN{terminal_id}",
            "terminal_lat": LAT,
            "terminal_lon": LON,
            "cell_id": "460-00-1234-5678",
            "ip_address": "10.0.0.1",
            "local_date": t.date(),
            "extra": None,
            "file_id": "f",
            "line_no": i + 1,
        }
        for k, v in overrides.items():
            row[k] = v[i] if isinstance(v, list) else v
        rows.append(row)
    return pl.DataFrame(rows, schema=TXN_SCHEMA)


def terminal_day_of(txns_frame: pl.DataFrame, config: dict) -> pl.DataFrame:
    """The terminal-day rows the rules see for ``txns_frame`` (registry and policy defaults)."""
    from features.daily import terminal_day
    from features.policy import policy_frame
    from features.transactions import enrich_transactions

    reg = registry([*txns_frame.get_column("terminal_id").unique()])
    pol = policy_frame({}, config["default_policy"])
    lf = enrich_transactions(txns_frame.lazy(), reg.lazy(), pol, config)
    day = terminal_day(lf, config).collect()
    return day.with_columns(pl.lit(0, dtype=pl.Int64).alias("n_implausible_time"))
