"""Hand-built ingest inputs: valid rows of every kind, Luhn-valid PANs, writers per format.

Loaded by the ingest tests with importlib (tests run in importlib mode).
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import polars as pl


def luhn_complete(body: str) -> str:
    """``body`` plus the check digit that makes it Luhn-valid."""
    for c in "0123456789":
        s = body + c
        total = 0
        for i, ch in enumerate(reversed(s)):
            d = int(ch)
            if i % 2:
                d = d * 2 - 9 if d > 4 else d * 2
            total += d
        if total % 10 == 0:
            return s
    raise AssertionError("unreachable")


def make_pans(n: int, seed: int = 0, length: int = 16, bin6: str = "622202") -> list[str]:
    """``n`` distinct Luhn-valid PANs."""
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        body = bin6 + "".join(str(rng.randrange(10)) for _ in range(length - 7))
        out.add(luhn_complete(body))
    return sorted(out)


def transactions(
    n: int, pans: list[str], start: int = 0, terminal: str = "TERM0001"
) -> list[dict]:
    """``n`` valid transaction rows (text values) with txn ids T{start}..."""
    rows = []
    for i in range(start, start + n):
        rows.append(
            {
                "txn_id": f"T{i:06d}",
                "terminal_id": terminal,
                "merchant_id": "123456789012345",
                "txn_time": f"2026-03-01T{8 + i % 12:02d}:{i % 60:02d}:00",
                "txn_type": "purchase",
                "amount_minor": str(1000 + i),
                "currency": "156",
                "pan": pans[i % len(pans)],
                "card_type": "debit",
                "entry_mode": "05",
                "pin_entered": "true",
                "mcc": "5411",
                "response_code": "00",
                "stan": f"{i:06d}",
                "terminal_lat": "31.2",
                "terminal_lon": "121.4",
            }
        )
    return rows


def terminals(n: int = 2) -> list[dict]:
    """``n`` valid registry rows."""
    return [
        {
            "terminal_id": f"TERM{i:04d}",
            "merchant_id": "123456789012345",
            "serial_number": f"SN{i:06d}",
            "merchant_name": f"上海便利店 {i}",
            "registered_mcc": "5411",
            "registered_lat": "31.2",
            "registered_lon": "121.4",
            "region_code": "310101",
            "terminal_kind": "fixed_pos",
            "policy_id": "default",
            "activated_at": "2026-02-01 09:00:00",
            "trial_start": "2026-02-01",
            "trial_end": "2026-04-30",
            "status": "active",
            "updated_at": "2026-02-01 09:00:00",
        }
        for i in range(1, n + 1)
    ]


def events(n: int = 3) -> list[dict]:
    """``n`` valid terminal events."""
    return [
        {
            "terminal_id": "TERM0001",
            "event_time": f"2026-03-01 0{i}:00:00",
            "event_type": "heartbeat",
            "device_serial": "SN000001",
            "lat": "31.2",
            "lon": "121.4",
            "detail": f"ok {i}",
        }
        for i in range(n)
    ]


def fraud_reports(pans: list[str]) -> list[dict]:
    """One valid fraud report per PAN."""
    return [
        {
            "report_id": f"R{i}",
            "pan": pan,
            "txn_id": f"T{i:06d}",
            "fraud_time": "2026-03-01 10:00:00",
            "reported_at": "2026-03-05 10:00:00",
            "fraud_type": "counterfeit",
        }
        for i, pan in enumerate(pans)
    ]


def write(rows: list[dict], path: Path, fmt: str = "csv") -> Path:
    """Write text rows as ``csv``, ``csv-bom``, ``csv-gb18030``, ``parquet`` or ``jsonl``.

    A ``.gz`` suffix on ``path`` gzip-compresses the result.
    """
    names = list(dict.fromkeys(k for r in rows for k in r))
    frame = pl.DataFrame(
        [{k: r.get(k) for k in names} for r in rows], schema={k: pl.String for k in names}
    )
    if fmt == "parquet":
        import io

        buf = io.BytesIO()
        frame.write_parquet(buf)
        data = buf.getvalue()
    elif fmt == "jsonl":
        data = "".join(
            json.dumps({k: v for k, v in r.items() if v is not None}, ensure_ascii=False) + "\n"
            for r in rows
        ).encode("utf-8")
    else:
        text = frame.write_csv()
        if fmt == "csv-gb18030":
            data = text.encode("gb18030")
        elif fmt == "csv-bom":
            data = "\ufeff".encode() + text.encode("utf-8")
        else:
            data = text.encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path
