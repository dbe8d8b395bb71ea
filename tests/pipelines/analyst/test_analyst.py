"""``trialguard flags``, ``show`` and ``review`` on a small hand-made store."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import re
from datetime import date, datetime
from pathlib import Path

import pytest

from pipelines import analyst
from pipelines.settings import Settings
from pipelines.storage import connect

_spec = importlib.util.spec_from_file_location(
    "_analyst_store", Path(__file__).with_name("_analyst_store.py")
)
store = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(store)


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return store.build_store(tmp_path_factory.mktemp("analyst") / "t.duckdb")


@pytest.fixture
def fresh_db(tmp_path) -> Path:
    return store.build_store(tmp_path / "t.duckdb")


def run(command: str, db: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    getattr(analyst, f"add_{command}_arguments")(parser)
    args = parser.parse_args(list(argv))
    return getattr(analyst, f"main_{command}")(args, Settings(db_path=db))


def ids(rows) -> list[str]:
    return [r["flag_id"] for r in rows]


# ---------------------------------------------------------------------------
# flags
# ---------------------------------------------------------------------------


def test_queue_is_open_flags_most_severe_first(db):
    con = connect(db, read_only=True)
    rows = analyst.query_flags(con, as_of=store.AS_OF)
    # critical, then high (F-REL-1 0.93 before F-SNZ-6 which is still snoozed), then medium
    assert ids(rows) == ["F-TLB-4", "F-REL-1", "F-CT-2"]
    assert rows[1]["merchant_name"] == store.EVIL_NAME
    assert rows[1]["reasons"][0] == "used 100 km from the registered address"


def test_filters(db):
    con = connect(db, read_only=True)
    q = analyst.query_flags
    assert ids(q(con, on=date(2025, 3, 9), as_of=store.AS_OF)) == ["F-REL-1", "F-CT-2"]
    assert ids(q(con, behaviours=["card_testing"])) == ["F-CT-2"]
    assert ids(q(con, categories=["non_compliance"])) == ["F-TLB-4"]
    assert ids(q(con, severities=["medium"], statuses=())) == ["F-PAN-1", "F-CT-2"]
    assert ids(q(con, min_severity="high", statuses=("confirmed", "dismissed"))) == []
    assert ids(q(con, terminals=["T0000001"], statuses=())) == ["F-REL-1", "F-PAN-1"]
    assert ids(q(con, since=date(2025, 3, 10))) == ["F-TLB-4", "F-REL-1", "F-CT-2"]
    assert len(q(con, statuses=(), limit=2)) == 2
    with pytest.raises(analyst.AnalystError, match="unknown behaviour 'relocate'.*relocation"):
        q(con, behaviours=["relocate"])


def test_snoozed_flag_stays_quiet_until_its_date(db):
    con = connect(db, read_only=True)
    # snoozed until 2025-03-12: quiet through that day, open again the day after
    on_day = analyst.query_flags(con, terminals=["T0000006"], as_of=date(2025, 3, 12))
    after = analyst.query_flags(con, terminals=["T0000006"], as_of=date(2025, 3, 13))
    assert on_day == []
    assert ids(after) == ["F-SNZ-6"] and after[0]["status"] == "open"
    snoozed = analyst.query_flags(con, statuses=("snoozed",), as_of=date(2025, 3, 11))
    assert ids(snoozed) == ["F-SNZ-6"] and snoozed[0]["snooze_until"] == date(2025, 3, 12)


@pytest.mark.parametrize(
    "value", ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "\tx", "\rx", "＝1+1", '=HYPERLINK("u")']
)
def test_spreadsheet_formulas_are_neutralised(value):
    assert analyst.spreadsheet_safe(value) == "'" + value


@pytest.mark.parametrize("value", ["Noodle bar", "面馆", "a=b", "", 1.5, None])
def test_ordinary_cells_are_left_alone(value):
    assert analyst.spreadsheet_safe(value) == value


def test_flags_csv_is_safe_to_open_in_a_spreadsheet(db, tmp_path):
    out = tmp_path / "flags.csv"
    assert run("flags", db, "--status", "all", "--format", "csv", "--out", str(out)) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert {r["flag_id"] for r in rows} == {
        "F-TLB-4",
        "F-REL-1",
        "F-CT-2",
        "F-MAL-3",
        "F-PAN-1",
        "F-SNZ-6",
    }
    evil = [r for r in rows if r["terminal_id"] == "T0000001"]
    assert evil and all(r["merchant_name"] == "'" + store.EVIL_NAME for r in evil)
    for r in rows:
        for cell in r.values():
            assert not cell.startswith(analyst.FORMULA_PREFIXES), cell
    # a reason text that starts with a formula character is neutralised too
    text = analyst.to_csv([{"reasons": [store.EVIL_REASON, "x"]}], ["reasons"])
    assert next(csv.DictReader(io.StringIO(text)))["reasons"].startswith("'@SUM")


def test_flags_json_and_table(db, capsys):
    assert run("flags", db, "--date", "2025-03-10", "--format", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["flag_id"] for d in data] == ["F-TLB-4", "F-REL-1", "F-CT-2"]
    assert data[1]["reasons"][1]["text"] == store.EVIL_REASON
    assert data[1]["evidence"] == ["X1070", "X1080", "X1090"]
    assert run("flags", db, "--severity", "critical,high", "--min-severity", "high") == 0
    out = capsys.readouterr().out
    assert "F-TLB-4" in out and "F-REL-1" in out and "F-CT-2" not in out


def test_flags_bad_filter_is_a_clear_error(db, capsys):
    assert run("flags", db, "--status", "closed") == 2
    assert "unknown status 'closed'; expected one of open, confirmed" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# show
# ---------------------------------------------------------------------------


def test_case_file_has_everything_an_analyst_needs(db):
    con = connect(db, read_only=True)
    case = analyst.case_file(con, "T0000001", as_of=store.AS_OF)
    assert [r["status"] for r in case["registry"]] == ["active", "pending"]
    assert case["policy"]["body"]["max_txn_amount_minor"] == 500000
    assert [f["flag_id"] for f in case["flags"]] == ["F-REL-1", "F-PAN-1"]
    assert case["flags"][1]["dispositions"][0]["analyst"] == "wang"
    assert [t["txn_id"] for t in case["evidence_transactions"]] == ["X1090", "X1080", "X1070"]
    for t in case["evidence_transactions"]:
        assert re.fullmatch(r"\d{6}\*{6}\d{4}", t["card"])
        assert t["flag_ids"] == ["F-REL-1"]
        assert 95_000 < t["distance_m"] < 105_000  # 0.9 degrees of latitude
    timeline = {d["day"]: d for d in case["timeline"]}
    assert len(timeline) == 10 and timeline[date(2025, 3, 9)]["txn_count"] == 4
    assert timeline[date(2025, 3, 9)]["behaviours"] == ["relocation"]
    assert case["distance_by_day"][0]["max_m"] < 1_000 < case["distance_by_day"][-1]["max_m"]
    assert {e["entry_mode"]: e["n"] for e in case["entry_modes"]} == {"05": 28, "90": 12}
    assert case["at_risk_cards"] == 1
    earlier = analyst.case_file(con, "T0000001", as_of=date(2025, 3, 5))
    assert len(earlier["timeline"]) == 5


def test_show_never_prints_card_tokens_or_more_than_bin_and_last4(db, capsys):
    assert run("show", db, "T0000001", "--json") == 0
    text = capsys.readouterr().out
    data = json.loads(text)
    assert data["terminal_id"] == "T0000001"
    assert "card_token" not in text and "tokT" not in text
    assert re.findall(r"622202\S*1000", text) == ["622202******1000"] * 3
    assert run("show", db, "T0000002") == 0
    out = capsys.readouterr().out
    assert "Noodle bar" in out and "Daily timeline" in out and "622202******" in out


def test_show_unknown_terminal(db, capsys):
    assert run("show", db, "NOPE0000") == 2
    assert "terminal 'NOPE0000' is not in the registry" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# review
# ---------------------------------------------------------------------------


def _dispositions(db: Path) -> list[tuple]:
    con = connect(db, read_only=True)
    try:
        return con.execute("SELECT * FROM dispositions ORDER BY decided_at, flag_id").fetchall()
    finally:
        con.close()


def test_review_appends_and_sets_status(fresh_db, capsys):
    before = _dispositions(fresh_db)
    assert (
        run(
            "review",
            fresh_db,
            "F-CT-2",
            "--decision",
            "confirmed",
            "--note",
            "cards tested in sequence",
            "--analyst",
            "zhao",
        )
        == 0
    )
    assert "F-CT-2: open -> confirmed by zhao" in capsys.readouterr().out
    assert (
        run(
            "review",
            fresh_db,
            "F-CT-2",
            "--decision",
            "dismissed",
            "--note",
            "test merchant",
            "--analyst",
            "li",
        )
        == 0
    )
    after = _dispositions(fresh_db)
    assert after[: len(before)] == before  # nothing changed or removed, only appended
    new = after[len(before) :]
    assert [(r[0], r[1], r[2], r[3]) for r in new] == [
        ("F-CT-2", "confirmed", "zhao", "cards tested in sequence"),
        ("F-CT-2", "dismissed", "li", "test merchant"),
    ]
    assert all(isinstance(r[4], datetime) for r in new) and new[0][4] <= new[1][4]
    con = connect(fresh_db, read_only=True)
    assert con.execute("SELECT status FROM flags WHERE flag_id = 'F-CT-2'").fetchone() == (
        "dismissed",
    )
    con.close()
    capsys.readouterr()
    assert run("show", fresh_db, "T0000002", "--json") == 0
    shown = json.loads(capsys.readouterr().out)["flags"][0]["dispositions"]
    assert [(d["analyst"], d["decision"]) for d in shown] == [
        ("zhao", "confirmed"),
        ("li", "dismissed"),
    ]


def test_snooze_needs_a_future_date(fresh_db, capsys):
    con = connect(fresh_db)
    now = datetime(2025, 3, 11, 9, 30)
    with pytest.raises(analyst.AnalystError, match="needs --until"):
        analyst.record_review(con, "F-REL-1", "snoozed", analyst="a", note="n", now=now)
    with pytest.raises(analyst.AnalystError, match="not after today"):
        analyst.record_review(
            con, "F-REL-1", "snoozed", analyst="a", note="n", until=date(2025, 3, 11), now=now
        )
    with pytest.raises(analyst.AnalystError, match="only applies to snoozed"):
        analyst.record_review(
            con, "F-REL-1", "confirmed", analyst="a", note="n", until=date(2025, 3, 20), now=now
        )
    row = analyst.record_review(
        con,
        "F-REL-1",
        "snoozed",
        analyst="a",
        note="wait for KYC",
        until=date(2025, 3, 20),
        now=now,
    )
    assert row["previous_status"] == "open"
    quiet = analyst.query_flags(con, terminals=["T0000001"], as_of=date(2025, 3, 20))
    back = analyst.query_flags(con, terminals=["T0000001"], as_of=date(2025, 3, 21))
    assert ids(quiet) == [] and ids(back) == ["F-REL-1"]
    con.close()


def test_review_rejects_bad_input_and_writes_nothing(fresh_db, capsys):
    before = _dispositions(fresh_db)
    assert (
        run(
            "review",
            fresh_db,
            "F-NOPE",
            "--decision",
            "confirmed",
            "--note",
            "x",
            "--analyst",
            "a",
        )
        == 2
    )
    assert "no flag 'F-NOPE'" in capsys.readouterr().err
    assert (
        run(
            "review",
            fresh_db,
            "F-CT-2",
            "--decision",
            "confirmed",
            "--note",
            "  ",
            "--analyst",
            "a",
        )
        == 2
    )
    assert "--note is blank" in capsys.readouterr().err
    assert (
        run(
            "review",
            fresh_db,
            "F-CT-2",
            "--decision",
            "snoozed",
            "--until",
            "2000-01-01",
            "--note",
            "x",
            "--analyst",
            "a",
        )
        == 2
    )
    assert "not after today" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: decision must be one of DECISIONS
        run("review", fresh_db, "F-CT-2", "--decision", "open", "--note", "x", "--analyst", "a")
    assert _dispositions(fresh_db) == before


def test_mask_card_shows_at_most_bin_and_last4():
    assert analyst.mask_card("62220212", "9876") == "62220212******9876"
    assert analyst.mask_card("6222021234567890", "123456") == "62220212******3456"
    assert analyst.mask_card(None, None) == "******"


def test_case_file_of_an_unregistered_terminal_uses_the_default_policy(fresh_db):
    con = connect(fresh_db)
    con.execute(
        "INSERT INTO transactions BY NAME SELECT * REPLACE ('T0000099' AS terminal_id, "
        "'Z' || txn_id AS txn_id) FROM transactions WHERE terminal_id = 'T0000003'"
    )
    case = analyst.case_file(con, "T0000099", as_of=store.AS_OF)
    assert case["current"] is None and case["registry"] == []
    assert case["policy"]["policy_id"] == "default"
    assert case["policy"]["applies_because"].startswith("not in the registry")
    assert case["txn_count"] == 40 and case["distance_by_day"] == []
    con.close()
