"""Ingest: formats, kinds, quarantine reasons, rejection, duplicates, policies, accounting."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import duckdb
import pytest

from pipelines.ingest.cards import card_token
from pipelines.ingest.discover import recognise_kind
from pipelines.ingest.load import ingest_paths
from pipelines.ingest.policies import parse_policies
from pipelines.ingest.readers import UnreadableFile
from pipelines.settings import MissingKeyError, Settings

_spec = importlib.util.spec_from_file_location(
    "_ingest_inputs", Path(__file__).with_name("_ingest_inputs.py")
)
inp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inp)

KEY = "test-key-0123456789abcdef0123456789abcdef"


@pytest.fixture
def settings(tmp_path):
    return Settings(db_path=tmp_path / "wh" / "t.duckdb", pan_key_env=KEY)


def rows_of(settings, sql):
    con = duckdb.connect(str(settings.db_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def one(report, name):
    return next(f for f in report.files if Path(f.path).name == name)


FORMATS = [
    ("tx.csv", "csv", "utf-8"),
    ("tx.csv", "csv-bom", "utf-8-sig"),
    ("tx.csv.gz", "csv", "utf-8"),
    ("tx.parquet", "parquet", None),
    ("tx.parquet.gz", "parquet", None),
    ("tx.jsonl", "jsonl", None),
    ("tx.jsonl.gz", "jsonl", None),
]


@pytest.mark.parametrize(("name", "fmt", "encoding"), FORMATS)
def test_every_format_loads_transactions_with_tokens(settings, tmp_path, name, fmt, encoding):
    pans = inp.make_pans(3)
    path = inp.write(inp.transactions(5, pans), tmp_path / name, fmt)
    report = ingest_paths(settings, [path], gate=False)
    f = one(report, name)
    assert (f.status, f.kind, f.rows_read, f.accepted, f.encoding) == (
        "loaded",
        "transactions",
        5,
        5,
        encoding,
    )
    got = rows_of(
        settings,
        "SELECT txn_id, card_token, card_bin, card_last4, amount_minor, pin_entered, line_no "
        "FROM transactions ORDER BY txn_id",
    )
    first = got[0]
    assert first[1] == card_token(KEY.encode(), pans[0])
    assert (first[2], first[3], first[4], first[5]) == (pans[0][:6], pans[0][-4:], 1000, True)
    # CSV: header is line 1; JSON Lines / Parquet: record numbers
    assert [r[6] for r in got] == ([2, 3, 4, 5, 6] if "csv" in name else [1, 2, 3, 4, 5])


def test_gb18030_registry_and_kind_recognition(settings, tmp_path):
    path = inp.write(inp.terminals(2), tmp_path / "registry.csv", "csv-gb18030")
    report = ingest_paths(settings, [path], gate=False)
    f = one(report, "registry.csv")
    assert (f.status, f.kind, f.encoding, f.accepted) == ("loaded", "terminals", "gb18030", 2)
    names = rows_of(settings, "SELECT merchant_name FROM terminals ORDER BY terminal_id")
    assert names == [("上海便利店 1",), ("上海便利店 2",)]


def test_quoted_newlines_keep_physical_line_numbers(settings, tmp_path):
    rows = inp.transactions(4, inp.make_pans(2))
    rows[0]["note"] = "two\nlines"
    for r in rows[1:]:
        r["note"] = "x"
    rows[2]["entry_mode"] = "5"  # starts on physical line 5 (line 2 spans lines 2-3)
    path = inp.write(rows, tmp_path / "tx.csv")
    ingest_paths(settings, [path], gate=False)
    assert rows_of(settings, "SELECT line_no FROM quarantine") == [(5,)]
    assert rows_of(settings, "SELECT line_no FROM transactions ORDER BY line_no") == [
        (2,),
        (4,),
        (6,),
    ]
    extra = rows_of(settings, "SELECT extra FROM transactions WHERE line_no = 2")[0][0]
    assert json.loads(extra) == {"note": "two\nlines"}


def test_quarantine_reasons_in_words(settings, tmp_path):
    pans = inp.make_pans(12)
    rows = inp.transactions(12, pans)
    rows[0]["amount_minor"] = "12.50"
    rows[1]["entry_mode"] = "5"
    rows[2]["currency"] = "CNY"
    rows[3]["pan"] = "4111 1111 1111 111x"  # a letter (spaces alone are a valid spelling)
    rows[4]["pan"] = ""
    rows[5]["txn_time"] = "yesterday"
    rows[6]["txn_type"] = "PURCHASE"
    rows[7]["amount_minor"] = "-5"
    rows[8]["terminal_id"] = ""
    rows[9]["pin_entered"] = "yes"
    rows[10]["txn_time"] = "1970-01-01 00:00:00"  # implausible but well-formed: accepted
    path = inp.write(rows, tmp_path / "tx.csv")
    report = ingest_paths(settings, [path], gate=False)
    f = one(report, "tx.csv")
    assert (f.rows_read, f.accepted, f.quarantined, f.duplicates) == (12, 2, 10, 0)
    reasons = dict(rows_of(settings, "SELECT line_no, reason FROM quarantine"))
    assert "amount_minor '12.50' is not a whole number" in reasons[2]
    assert "entry_mode '5' is not one of" in reasons[3]
    assert "currency 'CNY' does not have the expected format" in reasons[4]
    assert "pan is not 12-19 digits" in reasons[5] and "4111" not in reasons[5]
    assert "neither pan nor card_token is given" in reasons[6]
    assert "txn_time 'yesterday' is not an ISO 8601 timestamp" in reasons[7]
    assert "txn_type 'PURCHASE' is not one of" in reasons[8]
    assert "amount_minor '-5' is below the minimum 0" in reasons[9]
    assert "terminal_id is missing (required)" in reasons[10]
    assert "pin_entered 'yes' is not true or false" in reasons[11]
    raw = json.loads(rows_of(settings, "SELECT raw_row FROM quarantine WHERE line_no = 5")[0][0])
    assert raw["pan"] == "4111 1*********111x"


def test_coordinates_out_of_range_are_quarantined(settings, tmp_path):
    rows = inp.transactions(4, inp.make_pans(4))
    rows[0]["terminal_lat"], rows[0]["terminal_lon"] = "90", "-180"  # the bounds are allowed
    rows[1]["terminal_lat"] = "90.5"
    rows[2]["terminal_lon"] = "180.01"
    rows[3]["terminal_lon"] = "-181"
    reg = inp.terminals(2)
    reg[1]["registered_lat"] = "-91"
    ev = inp.events(2)
    ev[1]["lat"] = "123.4"
    report = ingest_paths(
        settings,
        [
            inp.write(rows, tmp_path / "tx.csv"),
            inp.write(reg, tmp_path / "reg.csv"),
            inp.write(ev, tmp_path / "ev.jsonl", "jsonl"),
        ],
        gate=False,
    )
    counts = {Path(f.path).name: (f.accepted, f.quarantined) for f in report.files}
    assert counts["tx.csv"] == (1, 3) and counts["reg.csv"] == (1, 1)
    assert counts["ev.jsonl"] == (1, 1)
    reasons = dict(
        rows_of(settings, "SELECT source_path || ':' || line_no, reason FROM quarantine")
    )
    by_name = {Path(k).name: v for k, v in reasons.items()}
    assert by_name["tx.csv:3"] == "terminal_lat '90.5' is above the maximum 90"
    assert by_name["tx.csv:4"] == "terminal_lon '180.01' is above the maximum 180"
    assert by_name["tx.csv:5"] == "terminal_lon '-181' is below the minimum -180"
    assert by_name["reg.csv:3"] == "registered_lat '-91' is below the minimum -90"
    assert by_name["ev.jsonl:2"] == "lat '123.4' is above the maximum 90"
    assert rows_of(settings, "SELECT terminal_lat, terminal_lon FROM transactions") == [
        (90.0, -180.0)
    ]


def test_card_token_rows_need_bin_and_last4(settings, tmp_path):
    rows = inp.transactions(2, ["0"])
    for r in rows:
        del r["pan"]
        r["card_token"] = "upstream-token"
    rows[0]["card_bin"], rows[0]["card_last4"] = "622202", "1234"
    rows[1]["card_bin"], rows[1]["card_last4"] = "622202", None
    path = inp.write(rows, tmp_path / "tx.csv")
    ingest_paths(settings, [path], gate=False)
    assert rows_of(settings, "SELECT card_token, card_bin, card_last4 FROM transactions") == [
        ("upstream-token", "622202", "1234")
    ]
    assert (
        "card_token is given without card_bin and card_last4"
        in (rows_of(settings, "SELECT reason FROM quarantine")[0][0])
    )


def test_fraud_report_order_and_offsets_to_local_time(settings, tmp_path):
    pans = inp.make_pans(2)
    rows = inp.fraud_reports(pans)
    rows[0]["fraud_time"] = "2026-03-01T02:00:00Z"  # 10:00 in Shanghai
    rows[1]["reported_at"] = "2026-02-01 10:00:00"  # before fraud_time
    path = inp.write(rows, tmp_path / "fraud.jsonl", "jsonl")
    report = ingest_paths(settings, [path], gate=False)
    assert one(report, "fraud.jsonl").kind == "fraud_reports"
    got = rows_of(settings, "SELECT report_id, fraud_time FROM fraud_reports")
    assert [(r[0], str(r[1])) for r in got] == [("R0", "2026-03-01 10:00:00")]
    assert rows_of(settings, "SELECT reason FROM quarantine") == [
        ("reported_at is before fraud_time",)
    ]


def test_duplicates_and_conflicts_within_and_across_files(settings, tmp_path):
    pans = inp.make_pans(3)
    rows = inp.transactions(4, pans)
    a = inp.write(rows + [dict(rows[0]), dict(rows[1], amount_minor="999")], tmp_path / "a.csv")
    later = [dict(rows[2]), dict(rows[3], response_code="05")] + inp.transactions(1, pans, 10)
    b = inp.write(later, tmp_path / "b.csv")
    report = ingest_paths(settings, [a, b], gate=False)
    fa, fb = one(report, "a.csv"), one(report, "b.csv")
    assert (fa.rows_read, fa.accepted, fa.quarantined, fa.duplicates) == (6, 4, 1, 1)
    assert (fb.rows_read, fb.accepted, fb.quarantined, fb.duplicates) == (3, 1, 1, 1)
    assert all(f.balanced for f in report.files)
    reasons = rows_of(settings, "SELECT line_no, reason FROM quarantine ORDER BY source_path")
    assert reasons[0][0] == 7 and "repeats line 3 of this file" in reasons[0][1]
    assert reasons[1][0] == 3 and "is already stored (line 5 of file" in reasons[1][1]
    # the first row wins: the stored amount and response code are the originals
    assert rows_of(
        settings, "SELECT amount_minor, response_code FROM transactions WHERE txn_id = 'T000003'"
    ) == [(1003, "00")]
    assert rows_of(settings, "SELECT count(*) FROM transactions") == [(5,)]


def test_events_get_stable_ids_and_identical_repeats_are_duplicates(settings, tmp_path):
    ev = inp.events(3)
    a = inp.write(ev, tmp_path / "events_a.parquet", "parquet")
    b = inp.write(ev[1:] + inp.events(4)[3:], tmp_path / "events_b.csv")
    report = ingest_paths(settings, [a, b], gate=False)
    fb = one(report, "events_b.csv")
    assert (fb.kind, fb.accepted, fb.duplicates) == ("terminal_events", 1, 2)
    ids = rows_of(settings, "SELECT count(DISTINCT event_id), count(*) FROM terminal_events")
    assert ids == [(4, 4)]


def test_terminal_registry_is_versioned(settings, tmp_path):
    regs = inp.terminals(1)
    v2 = dict(regs[0], status="suspended", updated_at="2026-03-01 12:00:00")
    a = inp.write(regs, tmp_path / "reg_a.csv")
    b = inp.write([regs[0], v2], tmp_path / "reg_b.csv")
    report = ingest_paths(settings, [a, b], gate=False)
    assert (one(report, "reg_b.csv").accepted, one(report, "reg_b.csv").duplicates) == (1, 1)
    assert rows_of(settings, "SELECT status FROM terminals ORDER BY updated_at") == [
        ("active",),
        ("suspended",),
    ]


def test_unregistered_terminal_is_accepted(settings, tmp_path):
    reg = inp.write(inp.terminals(1), tmp_path / "reg.csv")
    tx = inp.write(inp.transactions(2, inp.make_pans(1), terminal="ZZZZ9999"), tmp_path / "t.csv")
    report = ingest_paths(settings, [tx, reg], gate=False)
    assert [Path(f.path).name for f in report.files[:2]] == ["reg.csv", "t.csv"]
    assert one(report, "t.csv").accepted == 2


def test_free_text_card_numbers_are_redacted_and_counted(settings, tmp_path):
    pans = inp.make_pans(3)
    ev = inp.events(3)
    ev[0]["detail"] = f"card {pans[0][:4]} {pans[0][4:8]} {pans[0][8:12]} {pans[0][12:]} read"
    ev[1]["detail"] = "merchant 123456789012345 ok"  # 15 digits, not Luhn-valid
    ev[2]["sim_note"] = f"x{pans[1]}"  # an extra column is free text too
    ev[0]["sim_note"] = ev[1]["sim_note"] = None
    path = inp.write(ev, tmp_path / "ev.csv")
    report = ingest_paths(settings, [path], gate=False)
    assert one(report, "ev.csv").pan_redactions == 2
    got = rows_of(settings, "SELECT detail, extra FROM terminal_events ORDER BY event_time")
    assert got[0][0] == "card [PAN-REDACTED] read"
    assert got[1][0] == "merchant 123456789012345 ok"
    assert json.loads(got[2][1]) == {"sim_note": "x[PAN-REDACTED]"}


def test_luhn_valid_merchant_id_is_kept_but_redacted_in_free_text(settings, tmp_path):
    merchant_id = inp.luhn_complete("10231005411000")  # 15 digits that pass Luhn
    reg = inp.terminals(1)
    reg[0]["merchant_id"] = merchant_id
    reg[0]["merchant_name"] = f"shop {merchant_id}"
    tx = inp.transactions(1, inp.make_pans(1))
    tx[0]["merchant_id"] = merchant_id
    report = ingest_paths(
        settings,
        [inp.write(reg, tmp_path / "reg.csv"), inp.write(tx, tmp_path / "t.csv")],
        gate=False,
    )
    assert report.totals["pan_redactions"] == 1 and report.totals["accepted"] == 3
    assert rows_of(settings, "SELECT merchant_id, merchant_name FROM terminals") == [
        (merchant_id, "shop [PAN-REDACTED]")
    ]
    assert rows_of(settings, "SELECT merchant_id FROM transactions") == [(merchant_id,)]


def test_unreadable_files_are_rejected_and_the_rest_loaded(settings, tmp_path):
    pans = inp.make_pans(2)
    inp.write(inp.transactions(3, pans), tmp_path / "good.csv")
    inp.write(inp.transactions(3, pans, 10), tmp_path / "fake.parquet", "csv")
    inp.write(
        [{k: v for k, v in r.items() if k != "txn_time"} for r in inp.transactions(2, pans, 20)],
        tmp_path / "missing.csv",
    )
    data = gzip.compress(
        inp.write(inp.transactions(200, pans, 30), tmp_path / "x.csv").read_bytes()
    )
    (tmp_path / "x.csv").unlink()
    trunc = tmp_path / "trunc.csv.gz"
    trunc.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    report = ingest_paths(settings, [tmp_path], gate=False)
    status = {Path(f.path).name: (f.status, f.message) for f in report.files}
    assert status["good.csv"][0] == "loaded"
    assert "named as parquet but its content looks like csv" in status["fake.parquet"][1]
    assert "missing required column(s): txn_time" in status["missing.csv"][1]
    assert "truncated gzip archive" in status["trunc.csv.gz"][1]
    assert "empty" in status["empty.csv"][1]
    assert not report.ok and report.totals["files_rejected"] == 4
    manifest = rows_of(settings, "SELECT source_path, status FROM ingest_manifest")
    assert sorted(Path(p).name for p, s in manifest if s == "rejected") == sorted(
        ["fake.parquet", "missing.csv", "trunc.csv.gz", "empty.csv"]
    )
    assert rows_of(settings, "SELECT count(*) FROM transactions") == [(3,)]


def test_same_file_twice_is_skipped(settings, tmp_path):
    path = inp.write(inp.transactions(3, inp.make_pans(1)), tmp_path / "t.csv")
    ingest_paths(settings, [path], gate=False)
    again = ingest_paths(settings, [path], gate=False)
    assert again.files[0].status == "skipped" and "already ingested" in again.files[0].message
    assert rows_of(settings, "SELECT count(*) FROM ingest_manifest WHERE status = 'loaded'") == [
        (2,)  # the file and the shipped default policy
    ]
    runs = rows_of(settings, "SELECT command, status FROM runs")
    assert runs == [("ingest", "succeeded"), ("ingest", "succeeded")]


def test_policies_versions_and_shipped_default(settings, tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[policies.strict]\nmax_daily_txn_count = 10\n", encoding="utf-8")
    ingest_paths(settings, [p], gate=False)
    got = rows_of(settings, "SELECT policy_id FROM policies ORDER BY policy_id")
    assert got == [("default",), ("strict",)]  # the shipped default was added
    p2 = tmp_path / "p2.toml"
    p2.write_text("[policies.strict]\nmax_daily_txn_count = 10\n\n", encoding="utf-8")
    report = ingest_paths(settings, [p2], gate=False)
    assert (report.files[0].accepted, report.files[0].duplicates) == (0, 1)
    p3 = tmp_path / "p3.toml"
    p3.write_text("[policies.strict]\nmax_daily_txn_count = 12\n", encoding="utf-8")
    ingest_paths(settings, [p3], gate=False)
    assert rows_of(settings, "SELECT count(*) FROM policies WHERE policy_id = 'strict'") == [(2,)]
    bad = tmp_path / "bad.toml"
    bad.write_text("[policies.x]\nmax_daily_txn_cnt = 1\n", encoding="utf-8")
    report = ingest_paths(settings, [bad], gate=False)
    assert report.files[0].status == "rejected"
    assert "unknown key 'max_daily_txn_cnt'" in report.files[0].message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[policies.x]\nmax_txn_amount_minor = '5'", "'max_txn_amount_minor' must be a whole"),
        ("[policies.x]\nallowed_entry_modes = ['5']", "unknown code(s) ['5']"),
        ("[policies.x]\nbusiness_hours = ['7:00', '23:00']", "two times"),
        ("[other]\nx = 1", "only [policies.<policy_id>]"),
    ],
)
def test_policy_checks_name_the_key(text, needle):
    with pytest.raises(UnreadableFile, match=None) as err:
        parse_policies(text)
    assert needle in str(err.value)


def test_recognise_kind_and_forced_kind():
    tx = list(inp.transactions(1, ["4111111111111111"])[0])
    assert recognise_kind(tx) == "transactions"
    with pytest.raises(UnreadableFile, match="missing required column"):
        recognise_kind(tx, "terminals")
    with pytest.raises(UnreadableFile, match="match no input kind"):
        recognise_kind(["a", "b"])


def test_no_key_is_a_clear_error(tmp_path):
    path = inp.write(inp.transactions(1, inp.make_pans(1)), tmp_path / "t.csv")
    s = Settings(db_path=tmp_path / "t.duckdb", pan_key_file=tmp_path / "nokey")
    with pytest.raises(MissingKeyError, match="no card-number key"):
        ingest_paths(s, [path], gate=False)
    assert not (tmp_path / "t.duckdb").exists()


def test_cli_exit_codes(tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setenv("TRIALGUARD_PAN_KEY", KEY)
    (tmp_path / "in").mkdir()
    good = inp.write(inp.transactions(2, inp.make_pans(1)), tmp_path / "in" / "t.csv")
    db = str(tmp_path / "cli.duckdb")
    assert main(["ingest", "--db", db, "--no-gate", str(good)]) == 0
    assert "t.csv" in capsys.readouterr().out
    (tmp_path / "in" / "bad.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    assert main(["ingest", "--db", db, "--no-gate", str(tmp_path / "in")]) == 1
    assert "rejected" in capsys.readouterr().err
