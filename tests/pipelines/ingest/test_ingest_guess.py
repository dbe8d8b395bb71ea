"""Staging a CSV from a guess of its format while the file is sniffed (ingest_file).

The guess reads the first 64 KiB only; these tests give it files whose later part
contradicts it, and a renamed copy of a loaded file, and check that the result is
what a sniff-first ingest gives.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import duckdb
import pytest

from pipelines.ingest.load import ingest_paths
from pipelines.ingest.readers import guess_csv, sniff
from pipelines.settings import Settings

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


def _registry(n_ascii: int, n_chinese: int) -> list[dict]:
    rows = inp.terminals(n_ascii + n_chinese)
    for r in rows[:n_ascii]:
        r["merchant_name"] = f"Shanghai store {r['terminal_id']}"
    return rows


def test_gb18030_after_an_ascii_start_is_staged_again_as_gb18030(settings, tmp_path):
    path = inp.write(_registry(1200, 3), tmp_path / "registry.csv", "csv-gb18030")
    assert path.stat().st_size > 1 << 16
    assert guess_csv(path).encoding == "utf-8"  # the first 64 KiB are ASCII
    assert sniff(path).encoding == "gb18030"
    report = ingest_paths(settings, [path], gate=False)
    f = report.files[0]
    assert (f.status, f.encoding, f.rows_read, f.accepted, f.quarantined) == (
        "loaded",
        "gb18030",
        1203,
        1203,
        0,
    )
    names = rows_of(
        settings,
        "SELECT merchant_name FROM terminals WHERE merchant_name LIKE '上海%' ORDER BY 1",
    )
    assert names == [("上海便利店 1201",), ("上海便利店 1202",), ("上海便利店 1203",)]


def test_quoted_newline_after_the_guess_keeps_physical_line_numbers(settings, tmp_path):
    rows = inp.transactions(900, inp.make_pans(5))
    for r in rows:
        r["note"] = "x"
    rows[850]["note"] = "two\nlines"  # record 851 spans lines 852-853
    rows[851]["entry_mode"] = "5"  # so record 852 (invalid) starts on line 854
    path = inp.write(rows, tmp_path / "tx.csv")
    assert path.stat().st_size > 1 << 16 and guess_csv(path).simple_lines
    assert not sniff(path).simple_lines
    ingest_paths(settings, [path], gate=False)
    assert rows_of(settings, "SELECT line_no FROM quarantine") == [(854,)]
    lines = [r[0] for r in rows_of(settings, "SELECT line_no FROM transactions ORDER BY 1")]
    assert lines[849:852] == [851, 852, 855]
    assert len(lines) == 899 and lines[-1] == 902  # header + 900 records + 1 extra line


def test_a_renamed_copy_of_a_loaded_file_is_skipped_and_adds_nothing(settings, tmp_path):
    path = inp.write(inp.transactions(50, inp.make_pans(5)), tmp_path / "tx.csv")
    first = ingest_paths(settings, [path], gate=False)
    copy = tmp_path / "renamed.csv"
    shutil.copy(path, copy)
    again = ingest_paths(settings, [copy], gate=False)
    assert first.files[0].accepted == 50
    assert (again.files[0].status, again.files[0].file_id) == ("skipped", first.files[0].file_id)
    assert rows_of(settings, "SELECT count(*) FROM transactions") == [(50,)]
    staging = settings.db_path.with_name(f".{settings.db_path.name}.staging")
    assert not staging.exists()


def test_a_corrupt_gzip_is_rejected_with_the_sniff_message(settings, tmp_path):
    path = inp.write(inp.transactions(3000, inp.make_pans(5)), tmp_path / "tx.csv.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + bytes(200) + data[len(data) // 2 :])
    assert guess_csv(path) is not None  # its start still reads as a CSV
    report = ingest_paths(settings, [path], gate=False)
    f = report.files[0]
    assert f.status == "rejected" and "not a valid gzip archive" in f.message
    assert rows_of(settings, "SELECT count(*) FROM transactions") == [(0,)]
    assert rows_of(
        settings, "SELECT status FROM ingest_manifest WHERE source_path LIKE '%tx.csv.gz'"
    ) == [("rejected",)]


def test_a_callers_connection_gets_its_settings_back(settings, tmp_path):
    from pipelines.storage import connect

    path = inp.write(inp.transactions(20, inp.make_pans(3)), tmp_path / "tx.csv")
    con = connect(settings.db_path)
    try:
        con.execute("SET preserve_insertion_order = true")
        con.execute("SET force_compression = 'auto'")
        before = con.execute(
            "SELECT current_setting('preserve_insertion_order'), "
            "current_setting('force_compression')"
        ).fetchone()
        report = ingest_paths(settings, [path], con=con, gate=False)
        after = con.execute(
            "SELECT current_setting('preserve_insertion_order'), "
            "current_setting('force_compression')"
        ).fetchone()
    finally:
        con.close()
    assert report.files[0].accepted == 20
    assert after == before
