"""The Great Expectations gate: suites generated from the schema, failures recorded."""

from __future__ import annotations

import importlib.util
import json
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from features.schema import INPUT_KINDS, TABLES, TERMINAL_EVENTS, TRANSACTIONS
from pipelines.ingest.gate import CARD_COLUMNS, Gate, expectation_specs
from pipelines.ingest.load import _finish_gate, _start_gate, ingest_paths
from pipelines.ingest.stage import STAGE, attach_staging
from pipelines.settings import Settings

_spec = importlib.util.spec_from_file_location(
    "_ingest_inputs", Path(__file__).with_name("_ingest_inputs.py")
)
inp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inp)

KEY = "test-key-0123456789abcdef0123456789abcdef"
BOOKKEEPING = {"extra", "file_id", "line_no"}


def specs_by(kind, expectation):
    return {kw.get("column"): kw for cls, kw in expectation_specs(kind) if cls == expectation}


@pytest.mark.parametrize("kind", list(INPUT_KINDS.values()), ids=list(INPUT_KINDS))
def test_suite_is_generated_from_the_schema(kind):
    stored = [c for c in TABLES[kind.name][0] if c.name not in BOOKKEEPING]
    in_set = specs_by(kind, "ExpectColumnValuesToBeInSet")
    regex = specs_by(kind, "ExpectColumnValuesToMatchRegex")
    between = specs_by(kind, "ExpectColumnValuesToBeBetween")
    not_null = specs_by(kind, "ExpectColumnValuesToNotBeNull")
    for col in stored:
        if col.allowed:
            assert in_set[col.name]["value_set"] == list(col.allowed)
        if col.pattern and col.dtype == "str":
            assert regex[col.name]["regex"] == f"^(?:{col.pattern})$"
        if col.required or (kind.one_of and col.name in CARD_COLUMNS):
            assert col.name in not_null
        if col.min_value is not None or col.max_value is not None:
            assert between[col.name].get("min_value") == col.min_value
            assert between[col.name].get("max_value") == col.max_value
    assert set(in_set) == {c.name for c in stored if c.allowed}
    assert set(between) == {
        c.name for c in stored if c.min_value is not None or c.max_value is not None
    }
    (columns,) = [
        kw for cls, kw in expectation_specs(kind) if cls == "ExpectTableColumnsToMatchSet"
    ]
    assert columns["column_set"] == [c.name for c in stored]
    assert "pan" not in columns["column_set"]
    key = TABLES[kind.name][1]
    unique = [kw for cls, kw in expectation_specs(kind) if "Unique" in cls]
    assert unique == ([{"column": key[0]}] if len(key) == 1 else [{"column_list": list(key)}])


def test_coordinates_have_both_bounds():
    assert specs_by(TRANSACTIONS, "ExpectColumnValuesToBeBetween")["terminal_lat"] == {
        "column": "terminal_lat",
        "min_value": -90.0,
        "max_value": 90.0,
    }
    assert specs_by(TERMINAL_EVENTS, "ExpectColumnValuesToBeBetween")["lon"]["max_value"] == 180.0


def test_gate_passes_good_rows_and_records_a_failure_with_details(tmp_path):
    settings = Settings(db_path=tmp_path / "wh" / "t.duckdb", pan_key_env=KEY)
    pans = inp.make_pans(4)
    good = inp.write(inp.transactions(6, pans), tmp_path / "tx.csv")
    report = ingest_paths(settings, [good])
    (tx,) = [f for f in report.files if f.kind == "transactions"]
    assert report.ok and tx.gate_success is True
    assert Path(settings.data_docs_dir, "gx/uncommitted/data_docs/local_site/index.html").is_file()

    # rows the row checks would have quarantined, handed to the gate directly: it must fail
    con = duckdb.connect(str(settings.db_path))
    try:
        attach_staging(con, settings.db_path)
        con.execute(
            f"CREATE TABLE {STAGE} AS SELECT *, line_no AS _line, CAST(NULL AS VARCHAR) AS _reason, "
            "false AS _dup FROM transactions"
        )
        con.execute(f"UPDATE {STAGE} SET txn_type = 'PURCHASE' WHERE txn_id = 'T000001'")
        con.execute(
            f"UPDATE {STAGE} SET terminal_lat = 95.5 WHERE txn_id IN ('T000002', 'T000003')"
        )
        con.execute(f"UPDATE {STAGE} SET card_last4 = NULL WHERE txn_id = 'T000004'")
        gate = Gate(settings.data_docs_dir)
        gate.warm_up()  # the context opens in a thread; validation waits for it
        pending = _start_gate(con, TRANSACTIONS, "f" * 64, gate)
        assert _finish_gate(con, TRANSACTIONS, "f" * 64, pending, datetime(2026, 3, 2)) is False
        assert gate.build_docs() == gate.index_path
        row = con.execute(
            "SELECT suite, success, evaluated, failed, CAST(details AS VARCHAR), docs_path "
            "FROM gate_results WHERE file_id = ?",
            ["f" * 64],
        ).fetchone()
    finally:
        con.close()
    suite, success, evaluated, failed, details, docs_path = row
    assert (suite, success, failed) == ("trialguard.transactions", False, 3)
    assert evaluated == len(expectation_specs(TRANSACTIONS))
    got = {(d["expectation"], d["column"]): d for d in json.loads(details)}
    assert set(got) == {
        ("expect_column_values_to_be_in_set", "txn_type"),
        ("expect_column_values_to_be_between", "terminal_lat"),
        ("expect_column_values_to_not_be_null", "card_last4"),
    }
    in_set = got[("expect_column_values_to_be_in_set", "txn_type")]
    assert (in_set["unexpected_count"], in_set["element_count"]) == (1, 6)
    assert in_set["sample"] == ["PURCHASE"]
    assert got[("expect_column_values_to_be_between", "terminal_lat")]["unexpected_count"] == 2
    assert Path(docs_path).is_file()


def test_gate_reports_missing_columns_by_name(tmp_path):
    import polars as pl

    frame = pl.DataFrame({"report_id": ["R1"], "fraud_type": ["counterfeit"]})
    result = Gate(tmp_path / "docs").validate("fraud_reports", frame, "a" * 64)
    assert not result.success
    (columns,) = [d for d in result.details if d["expectation"].startswith("expect_table_columns")]
    assert "fraud_time" in json.dumps(columns["mismatched"])


def test_a_warm_up_failure_is_raised_at_first_use_not_swallowed(tmp_path):
    blocker = tmp_path / "docs"
    blocker.write_text("a file where the Data Docs folder should be")
    gate = Gate(blocker)
    gate.warm_up()
    frame = pl.DataFrame({"txn_id": ["T1"]})
    with pytest.raises(OSError):
        gate.validate("transactions", frame, "f" * 64)
