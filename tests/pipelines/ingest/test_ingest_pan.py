"""No full card number is ever written: the database file, its WAL and the Data Docs hold none."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import duckdb
import pytest

from pipelines.ingest.load import ingest_paths
from pipelines.settings import Settings

_spec = importlib.util.spec_from_file_location(
    "_ingest_inputs", Path(__file__).with_name("_ingest_inputs.py")
)
inp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inp)

KEY = "test-key-0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "gate", [False, pytest.param(True, marks=pytest.mark.slow, id="with-gate-and-data-docs")]
)
def test_no_pan_in_database_bytes_wal_or_docs(tmp_path, gate):
    pans = inp.make_pans(40, seed=7) + inp.make_pans(5, seed=8, length=19, bin6="621700")
    land = tmp_path / "landing"
    land.mkdir()
    tx = inp.transactions(30, pans[:30])
    tx[0]["amount_minor"] = "12.50"  # quarantined with its pan
    tx[1]["pan"] = pans[30][:4] + "x" + pans[30][4:]  # malformed pan, quarantined
    tx[2]["note"] = f"pan {pans[31]}"  # card number in an extra column
    tx[3]["txn_id"] = pans[32]  # a card number where an identifier belongs
    tx[3]["entry_mode"] = "5"
    tx[4] = dict(tx[5], amount_minor="1")  # a conflict with its own pan
    inp.write(tx[:15], land / "tx_a.csv")
    inp.write(tx[15:], land / "tx_b.parquet", "parquet")
    inp.write(inp.transactions(5, pans[33:38], 100), land / "tx_c.jsonl.gz", "jsonl")
    reg = inp.terminals(2)
    reg[0]["merchant_name"] = f"shop {pans[38]}"
    inp.write(reg, land / "reg.csv", "csv-gb18030")
    ev = inp.events(2)
    ev[0]["detail"] = f"{pans[39][:4]}-{pans[39][4:8]}-{pans[39][8:12]}-{pans[39][12:]}"
    inp.write(ev, land / "ev.csv.gz")
    fr = inp.fraud_reports(pans[40:45])
    fr[0]["reported_at"] = "2020-01-01 00:00:00"  # quarantined with its pan
    inp.write(fr, land / "fraud.jsonl", "jsonl")
    bad = inp.transactions(3, pans[:3], 500)
    for r in bad:
        del r["txn_time"]
    inp.write(bad, land / "rejected.csv")

    db = tmp_path / "wh" / "t.duckdb"
    settings = Settings(db_path=db, pan_key_env=KEY)
    report = ingest_paths(settings, [land], gate=gate)
    totals = report.totals
    assert totals["files_rejected"] == 1 and totals["quarantined"] == 5
    assert totals["pan_redactions"] == 3
    gates = [f.gate_success for f in report.files if f.status == "loaded" and f.kind != "policies"]
    assert gates == [True] * 6 if gate else gates == [None] * 6
    con = duckdb.connect(str(db))
    assert con.execute("SELECT count(*) FROM quarantine").fetchone()[0] == totals["quarantined"]
    con.execute("CHECKPOINT")
    con.close()

    blobs = {p: p.read_bytes() for p in db.parent.rglob("*") if p.is_file()}
    assert db in blobs and (len(blobs) > 3 or not gate)  # the database (and Data Docs)
    for pan in pans:
        for path, data in blobs.items():
            assert pan.encode() not in data, f"a test PAN was found in {path.name}"
