"""Card numbers as people write them: one card, one token; invalid numbers quarantined with BIN + last 4 at most."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from pipelines.ingest.cards import card_token, luhn_valid, luhn_valid_arrow
from pipelines.ingest.load import ingest_paths
from pipelines.settings import Settings

_spec = importlib.util.spec_from_file_location(
    "_ingest_inputs", Path(__file__).with_name("_ingest_inputs.py")
)
inp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inp)

KEY = "test-key-0123456789abcdef0123456789abcdef"


def test_vectorised_luhn_matches_the_reference():
    rng = random.Random(3)
    values = [None, "", "abc", "4111111111111111", "4111111111111112", "0" * 19, "1" * 20]
    values += [
        "".join(rng.choice("0123456789") for _ in range(rng.randint(10, 21))) for _ in range(3000)
    ]
    values += inp.make_pans(200, seed=4) + inp.make_pans(50, seed=5, length=19)
    got = luhn_valid_arrow(pa.array(values, type=pa.string())).to_pylist()
    want = [v is not None and v.isdigit() and 12 <= len(v) <= 19 and luhn_valid(v) for v in values]
    assert got == want
    # an offset (sliced) array is read from its own values, not from the buffer's start
    assert luhn_valid_arrow(pa.array(values, type=pa.string()).slice(5)).to_pylist() == want[5:]


def _grouped(pan: str, sep: str) -> str:
    return sep.join(pan[i : i + 4] for i in range(0, len(pan), 4))


@pytest.fixture
def store(tmp_path):
    pans = inp.make_pans(6, seed=21)
    good19 = inp.make_pans(1, seed=22, length=19, bin6="621700")[0]
    land = tmp_path / "landing"
    land.mkdir()
    tx = inp.transactions(12, pans + [good19])
    tx[0]["pan"] = _grouped(pans[0], " ")  # the same card as tx[7], written with spaces
    tx[1]["pan"] = _grouped(pans[1], "-")  # with dashes
    bad_luhn = pans[2][:-1] + str((int(pans[2][-1]) + 1) % 10)
    tx[2]["pan"] = bad_luhn
    tx[3]["pan"] = pans[3][:11]  # 11 digits
    tx[4]["pan"] = pans[4] + "0000"  # 20 digits
    tx[5]["pan"] = pans[5][:8] + "A" + pans[5][9:]  # a letter
    tx[8]["pan"] = pans[1][:4] + "  " + pans[1][4:]  # a doubled separator is no spelling
    inp.write(tx, land / "tx.csv")
    fr = inp.fraud_reports([_grouped(pans[0], "-"), bad_luhn])
    inp.write(fr, land / "fraud.csv")
    db = tmp_path / "t.duckdb"
    report = ingest_paths(Settings(db_path=db, pan_key_env=KEY), [land], gate=False)
    return db, report, pans, bad_luhn


def test_separators_are_removed_before_the_hmac_in_every_table(store):
    db, _report, pans, _ = store
    con = duckdb.connect(str(db), read_only=True)
    tokens = dict(con.execute("SELECT txn_id, card_token FROM transactions").fetchall())
    fraud = dict(con.execute("SELECT report_id, card_token FROM fraud_reports").fetchall())
    want = card_token(KEY.encode(), pans[0])
    assert tokens["T000000"] == tokens["T000007"] == want
    assert tokens["T000001"] == card_token(KEY.encode(), pans[1])
    assert fraud["R0"] == want  # the fraud report matches the transaction
    bins = con.execute(
        "SELECT card_bin, card_last4 FROM transactions WHERE txn_id = 'T000000'"
    ).fetchone()
    assert bins == (pans[0][:6], pans[0][-4:])


def test_invalid_pans_are_quarantined_with_at_most_bin_and_last4(store):
    db, report, pans, bad_luhn = store
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT line_no, reason, raw_row::VARCHAR FROM quarantine ORDER BY kind, line_no"
    ).fetchall()
    reasons = {r[1] for r in rows}
    assert len(rows) == 6, rows  # five transactions and one fraud report
    assert any("fails the Luhn check" in r for r in reasons)
    assert sum("not 12-19 digits" in r for r in reasons) >= 1
    assert (
        report.totals["rows_read"]
        == report.totals["accepted"] + report.totals["quarantined"] + report.totals["duplicates"]
    )
    text = " ".join(f"{r[1]} {r[2]}" for r in rows)
    for pan in [*pans, bad_luhn]:
        assert pan not in text and pan[:11] not in text
    assert f"{bad_luhn[:6]}...{bad_luhn[-4:]}" in text
