"""``trialguard verdicts`` on a small hand-made store (the rules are in tests/models)."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
from datetime import date
from pathlib import Path

import pytest

from pipelines.analyst import verdicts
from pipelines.analyst.common import FORMULA_PREFIXES, AnalystError
from pipelines.settings import Settings
from pipelines.storage import connect

_spec = importlib.util.spec_from_file_location(
    "_analyst_store", Path(__file__).with_name("_analyst_store.py")
)
store = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(store)


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return store.build_store(tmp_path_factory.mktemp("verdicts") / "t.duckdb")


def run(db: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    verdicts.add_arguments(parser)
    return verdicts.main(parser.parse_args(list(argv)), Settings(db_path=db))


def test_trials_ending_within_a_week_are_judged(db):
    con = connect(db, read_only=True)
    got = {v["terminal_id"]: v for v in verdicts.compute_verdicts(con, store.AS_OF)}
    # T0000006's trial ends in June: not judged yet.
    assert {t: v["verdict"] for t, v in got.items()} == {
        "T0000001": "terminate",  # open high relocation + confirmed pan exposure
        "T0000002": "extend",  # medium card testing still open
        "T0000003": "pass",  # only a dismissed malfunction
        "T0000004": "extend",  # open trial-limit breach
        "T0000005": "extend",  # active on 2 days only
    }
    t1 = got["T0000001"]
    assert t1["flag_ids"] == ["F-REL-1", "F-PAN-1"]
    assert t1["counts"]["active_days"] == 10 and t1["counts"]["txn_count"] == 40
    assert t1["days_left"] == 2 and t1["merchant_name"] == store.EVIL_NAME
    assert "confirmed" in t1["rationale"] and "relocation" in t1["rationale"]
    assert got["T0000002"]["counts"]["declined_count"] == 20


def test_window_and_explicit_terminals(db):
    con = connect(db, read_only=True)
    narrow = verdicts.compute_verdicts(con, store.AS_OF, within_days=2)
    assert [v["terminal_id"] for v in narrow] == ["T0000004", "T0000001"]  # by trial end
    later = verdicts.compute_verdicts(con, date(2025, 3, 16), within_days=0, ended_days=2)
    assert [v["terminal_id"] for v in later] == ["T0000003", "T0000002"]  # ended 03-14, 03-15
    # A snoozed high flag is unresolved: it counts while snoozed and after.
    for day in (date(2025, 3, 11), date(2025, 3, 13)):
        snoozed = verdicts.compute_verdicts(con, day, terminals=["T0000006"])
        assert snoozed[0]["verdict"] == "terminate"
        assert snoozed[0]["counts"]["snoozed" if day.day == 11 else "open"] == 1
    # Judging an earlier day ignores flags first seen after it.
    early = verdicts.compute_verdicts(con, date(2025, 3, 7), terminals=["T0000001"])
    assert early[0]["flag_ids"] == ["F-PAN-1"] and early[0]["counts"]["active_days"] == 7
    with pytest.raises(AnalystError, match="NOPE0000 not in the registry"):
        verdicts.compute_verdicts(con, store.AS_OF, terminals=["NOPE0000"])


def test_cli_formats(db, capsys, tmp_path):
    assert run(db, "--date", "2025-03-10", "--format", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 5 and {"verdict", "rationale", "evidence"} <= set(data[0])
    out = tmp_path / "v.csv"
    assert run(db, "--date", "2025-03-10", "--format", "csv", "--out", str(out)) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert [r["verdict"] for r in rows].count("terminate") == 1
    assert all(not c.startswith(FORMULA_PREFIXES) for r in rows for c in r.values())
    assert run(db, "--date", "2025-03-10", "--terminal", "T0000003") == 0
    table = capsys.readouterr().out
    assert "PASS" in table and "Quiet bakery" in table
    assert run(db, "--date", "2025-03-10", "--within", "-1") == 2
    assert "must be 0 or more" in capsys.readouterr().err
