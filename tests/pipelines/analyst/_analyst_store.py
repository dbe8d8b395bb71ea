"""A small hand-made store for the analyst, verdict and report tests.

Loaded by path from the test modules (``load_store_module``), because the test
folders are not packages. Everything is inserted into a real DuckDB file created
by ``pipelines.storage.connect``.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from features.schema import TABLES
from pipelines.storage import connect

AS_OF = date(2025, 3, 10)
START = date(2025, 3, 1)
#: A merchant name that is a formula, markup and a script at once (untrusted input).
EVIL_NAME = '=HYPERLINK("http://evil.example/x","Click")<script>alert(1)</script><b>&amp;'
EVIL_REASON = '@SUM(1+1) <img src=x onerror="alert(2)">'

# terminal -> (merchant_name, registered lat/lon, trial_end, status, active days)
TERMINALS = {
    "T0000001": (EVIL_NAME, 31.2304, 121.4737, date(2025, 3, 12), "active", 10),
    "T0000002": ("Noodle bar 面馆", 31.2000, 121.4000, date(2025, 3, 15), "active", 10),
    "T0000003": ("Quiet bakery", 31.1000, 121.3000, date(2025, 3, 14), "active", 10),
    "T0000004": ("Cap breaker shop", 31.3000, 121.5000, date(2025, 3, 11), "active", 10),
    "T0000005": ("Sleepy kiosk", 31.0500, 121.2500, date(2025, 3, 13), "active", 2),
    "T0000006": ("Far future shop", 31.0000, 121.0000, date(2025, 6, 30), "active", 10),
}


def insert(con, table: str, rows: list[dict]) -> None:
    """Insert rows into a stored table, filling absent columns with NULL."""
    cols = [c.name for c in TABLES[table][0]]
    # One Arrow batch instead of row-by-row executemany, which is slow in DuckDB.
    batch = pa.table({c: [r.get(c) for r in rows] for c in cols})
    con.register("_batch", batch)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _batch")
    finally:
        con.unregister("_batch")


def reason(code: str, text: str, observed: float, threshold: float) -> dict:
    return {"code": code, "text": text, "observed": observed, "threshold": threshold}


def build_store(path: Path) -> Path:
    """Create the database at ``path`` and fill it; returns ``path``."""
    con = connect(path)
    insert(
        con,
        "policies",
        [
            {
                "policy_id": "default",
                "version": "v" * 64,
                "body": json.dumps(
                    {"max_txn_amount_minor": 500000, "geofence_m": {"fixed_pos": 500}}
                ),
                "file_id": "f-policy",
                "loaded_at": datetime(2025, 2, 20, 9),
            }
        ],
    )
    terminals, txns = [], []
    for i, (tid, (name, lat, lon, trial_end, status, active)) in enumerate(TERMINALS.items()):
        base = {
            "terminal_id": tid,
            "merchant_id": f"8483100{5411:04d}{i:04d}",
            "serial_number": f"SN{i:06d}",
            "merchant_name": name,
            "registered_mcc": "5411",
            "registered_lat": lat,
            "registered_lon": lon,
            "region_code": "310101",
            "terminal_kind": "fixed_pos",
            "terminal_model": "PAX A920",
            "policy_id": "default",
            "activated_at": datetime(2025, 2, 28, 10),
            "trial_start": START,
            "trial_end": trial_end,
            "status": status,
            "file_id": "f-terminals",
        }
        terminals.append(
            base
            | {"updated_at": datetime(2025, 2, 27, 9), "status": "pending", "line_no": 2 * i + 1}
        )
        terminals.append(base | {"updated_at": datetime(2025, 2, 28, 10), "line_no": 2 * i + 2})
        for d in range(active):
            day = START + timedelta(days=d)
            for k in range(4):
                far = tid == "T0000001" and d >= 7  # relocated for the last days
                declined = tid == "T0000002" and k % 2 == 0
                txns.append(
                    {
                        "txn_id": f"X{tid[-1]}{d:02d}{k}",
                        "terminal_id": tid,
                        "merchant_id": base["merchant_id"],
                        "txn_time": datetime(day.year, day.month, day.day, 10 + k, 5),
                        "txn_type": "purchase",
                        "amount_minor": 10000 * (k + 1) + d,
                        "currency": "156",
                        "card_token": f"tok{tid}{k}",
                        "card_bin": "622202",
                        "card_last4": f"{1000 + k:04d}",
                        "card_type": "debit",
                        "entry_mode": "90" if far else "05",
                        "mcc": "5411",
                        "response_code": "05" if declined else "00",
                        "terminal_lat": lat + (0.9 if far else 0.001),
                        "terminal_lon": lon,
                        "local_date": day,
                        "file_id": "f-txns",
                        "line_no": len(txns) + 1,
                    }
                )
    insert(con, "terminals", terminals)
    insert(con, "transactions", txns)
    flags = [
        # T1: relocation, high, open, with an untrusted reason text.
        {
            "flag_id": "F-REL-1",
            "terminal_id": "T0000001",
            "behaviour": "relocation",
            "category": "illegal_terminal",
            "score": 0.93,
            "severity": "high",
            "first_seen": date(2025, 3, 8),
            "last_seen": AS_OF,
            "reasons": [
                reason("distance_km", "used 100 km from the registered address", 100.0, 0.5),
                reason("note", EVIL_REASON, 1.0, 0.0),
            ],
            "evidence": ["X1070", "X1080", "X1090"],
            "status": "open",
        },
        # T2: card testing, medium, open.
        {
            "flag_id": "F-CT-2",
            "terminal_id": "T0000002",
            "behaviour": "card_testing",
            "category": "illegal_terminal",
            "score": 0.55,
            "severity": "medium",
            "first_seen": date(2025, 3, 9),
            "last_seen": AS_OF,
            "reasons": [reason("decline_rate", "half of the transactions declined", 0.5, 0.2)],
            "evidence": ["X2090", "X2092"],
            "status": "open",
        },
        # T3: a dismissed flag only.
        {
            "flag_id": "F-MAL-3",
            "terminal_id": "T0000003",
            "behaviour": "malfunction",
            "category": "operational",
            "score": 0.3,
            "severity": "low",
            "first_seen": date(2025, 3, 2),
            "last_seen": date(2025, 3, 2),
            "reasons": [reason("reversals", "reversals above normal", 3.0, 2.0)],
            "evidence": ["X3010"],
            "status": "dismissed",
        },
        # T4: trial limit breach, critical, open.
        {
            "flag_id": "F-TLB-4",
            "terminal_id": "T0000004",
            "behaviour": "trial_limit_breach",
            "category": "non_compliance",
            "score": 0.99,
            "severity": "critical",
            "first_seen": AS_OF,
            "last_seen": AS_OF,
            "reasons": [reason("daily_amount", "daily amount over the cap", 2500000.0, 2000000.0)],
            "evidence": ["X4090"],
            "status": "open",
        },
        # T1 again: a confirmed pan exposure from earlier.
        {
            "flag_id": "F-PAN-1",
            "terminal_id": "T0000001",
            "behaviour": "pan_exposure",
            "category": "data_leakage",
            "score": 0.7,
            "severity": "medium",
            "first_seen": date(2025, 3, 3),
            "last_seen": date(2025, 3, 3),
            "reasons": [reason("redactions", "card numbers in merchant free text", 1.0, 0.0)],
            "evidence": [],
            "status": "confirmed",
        },
        # T6: snoozed until 2025-03-12.
        {
            "flag_id": "F-SNZ-6",
            "terminal_id": "T0000006",
            "behaviour": "mcc_mismatch",
            "category": "illegal_terminal",
            "score": 0.6,
            "severity": "high",
            "first_seen": date(2025, 3, 5),
            "last_seen": date(2025, 3, 6),
            "reasons": [reason("mcc", "message MCC differs from the registered one", 1.0, 0.0)],
            "evidence": ["X6050"],
            "status": "snoozed",
        },
    ]
    merchant = {t["terminal_id"]: t["merchant_id"] for t in terminals}
    insert(
        con,
        "flags",
        [
            f
            | {
                "reasons": json.dumps(f["reasons"]),
                "evidence": json.dumps(f["evidence"]),
                "merchant_id": merchant[f["terminal_id"]],
                "run_id": "run-1",
            }
            for f in flags
        ],
    )
    insert(
        con,
        "dispositions",
        [
            {
                "flag_id": "F-MAL-3",
                "decision": "dismissed",
                "analyst": "li",
                "note": "known outage",
                "decided_at": datetime(2025, 3, 3, 9),
            },
            {
                "flag_id": "F-PAN-1",
                "decision": "confirmed",
                "analyst": "wang",
                "note": "seen on receipt",
                "decided_at": datetime(2025, 3, 4, 9),
            },
            {
                "flag_id": "F-SNZ-6",
                "decision": "snoozed",
                "analyst": "li",
                "note": "MCC fix pending",
                "decided_at": datetime(2025, 3, 7, 9),
                "snooze_until": date(2025, 3, 12),
            },
        ],
    )
    insert(
        con,
        "at_risk_cards",
        [
            {
                "flag_id": "F-PAN-1",
                "terminal_id": "T0000001",
                "card_token": "tokT00000010",
                "card_bin": "622202",
                "card_last4": "1000",
                "run_id": "run-1",
            }
        ],
    )
    insert(
        con,
        "ingest_manifest",
        [
            {
                "file_id": "f-txns",
                "source_path": "landing/txns.csv",
                "kind": "transactions",
                "format": "csv",
                "encoding": "utf-8",
                "status": "loaded",
                "rows_read": len(txns) + 2,
                "accepted": len(txns),
                "quarantined": 2,
                "duplicates": 0,
                "pan_redactions": 1,
                "gate_success": True,
                "started_at": datetime(2025, 3, 11, 1),
                "finished_at": datetime(2025, 3, 11, 1, 1),
            },
            {
                "file_id": "f-bad",
                "source_path": "landing/bad.csv",
                "kind": "transactions",
                "format": "csv",
                "status": "rejected",
                "rows_read": 10,
                "accepted": 0,
                "quarantined": 0,
                "gate_success": False,
                "message": "header not recognised",
                "started_at": datetime(2025, 3, 11, 1),
                "finished_at": datetime(2025, 3, 11, 1),
            },
        ],
    )
    insert(
        con,
        "gate_results",
        [
            {
                "file_id": "f-txns",
                "kind": "transactions",
                "suite": "transactions_gate",
                "success": True,
                "evaluated": 40,
                "failed": 0,
                "details": "[]",
                "validated_at": datetime(2025, 3, 11, 1),
            },
            {
                "file_id": "f-bad",
                "kind": "transactions",
                "suite": "transactions_gate",
                "success": False,
                "evaluated": 40,
                "failed": 3,
                "details": json.dumps(
                    [{"expectation": "amount_minor >= 0", "observed": "<b>-5</b>"}]
                ),
                "validated_at": datetime(2025, 3, 11, 1),
            },
        ],
    )
    insert(
        con,
        "quarantine",
        [
            {
                "file_id": "f-txns",
                "source_path": "landing/txns.csv",
                "kind": "transactions",
                "line_no": 7,
                "reason": "amount_minor '12.50' is not whole minor units",
                "raw_row": "{}",
                "quarantined_at": datetime(2025, 3, 11, 1),
            },
            {
                "file_id": "f-txns",
                "source_path": "landing/txns.csv",
                "kind": "transactions",
                "line_no": 9,
                "reason": "entry_mode '5' is not one of 01, 02, 03, 05, 07, 80, 90, 91",
                "raw_row": "{}",
                "quarantined_at": datetime(2025, 3, 11, 1),
            },
        ],
    )
    insert(
        con,
        "runs",
        [
            {
                "run_id": "run-1",
                "command": "run",
                "as_of": AS_OF,
                "started_at": datetime(2025, 3, 11, 2),
                "finished_at": datetime(2025, 3, 11, 2, 1),
                "status": "succeeded",
                "row_counts": json.dumps({"transactions": len(txns), "flags": len(flags)}),
                "duration_s": 60.0,
                "code_version": "abc123",
            },
        ],
    )
    con.close()
    return path
