"""The nightly flow, end to end under the Prefect test harness, on a real DuckDB file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from pipelines.detect.nightly import dates_to_detect
from pipelines.flows import nightly_flow
from pipelines.ingest.landing import file_sha256
from pipelines.runlock import RunLockError
from pipelines.storage import connect

ROOT = Path(__file__).resolve().parents[2]
D1 = date(2025, 9, 1)

FLAG_COLUMNS = (
    "flag_id, terminal_id, merchant_id, behaviour, category, score, severity, first_seen, "
    "last_seen, CAST(reasons AS VARCHAR), CAST(evidence AS VARCHAR), status"
)  # every column but run_id ("the run that last touched it")


def _flags(db: Path) -> list[tuple]:
    con = connect(db, read_only=True)
    try:
        return con.execute(f"SELECT {FLAG_COLUMNS} FROM flags ORDER BY flag_id").fetchall()
    finally:
        con.close()


def _nightly_rows(db: Path) -> list[dict]:
    con = connect(db, read_only=True)
    try:
        cur = con.execute(
            "SELECT run_id, as_of, status, CAST(inputs AS VARCHAR) AS inputs, code_version, "
            "config_version, policy_version, CAST(row_counts AS VARCHAR) AS row_counts, "
            "duration_s, message FROM runs WHERE command = 'nightly' ORDER BY started_at"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


def test_dates_to_detect_refuses_a_long_gap_with_the_command_to_close_it():
    with pytest.raises(ValueError, match=r"trialguard run --from 2026-01-02 --to 2026-03-13"):
        dates_to_detect(date(2026, 1, 1), date(2026, 3, 14), max_backfill_days=31)
    with pytest.raises(ValueError, match=r"trialguard run --from 2026-01-01 --to 2026-03-13"):
        dates_to_detect(None, date(2026, 3, 14), max_backfill_days=31, first_data=date(2026, 1, 1))
    days = dates_to_detect(date(2026, 1, 1), date(2026, 2, 1), max_backfill_days=31)
    assert days == [date(2026, 1, 2) + timedelta(days=i) for i in range(31)]


@pytest.mark.usefixtures("prefect_harness", "pan_key_env")
def test_nightly_ingests_detects_records_and_reruns_identically(tmp_path, small_trial_landing):
    db = tmp_path / "tg.duckdb"
    flow = nightly_flow()

    # First night: ingest every landing file, detect D2, record the run.
    out = flow(as_of=D1 + timedelta(days=1), landing=str(small_trial_landing), db=str(db),
               report=False)  # fmt: skip
    flags = _flags(db)
    assert flags, "the simulated trial has injected behaviours; the nightly run found none"
    (run,) = _nightly_rows(db)
    assert run["status"] == "succeeded" and run["run_id"] == out["run_id"]
    inputs = json.loads(run["inputs"])
    on_disk = sorted(p for p in small_trial_landing.rglob("*") if p.is_file())
    assert sorted(i["path"] for i in inputs) == sorted(
        str(p.relative_to(small_trial_landing)) for p in on_disk
    )
    for item in inputs:
        assert item["file_id"] == file_sha256(small_trial_landing / item["path"])
        assert item["status"] == "new"
    counts = json.loads(run["row_counts"])
    assert counts["ingest"]["files_new"] == len(on_disk)
    assert counts["ingest"]["accepted"] > 0
    assert counts["ingest"]["files_rejected"] == 0
    # No earlier detection: the nights from the first day with data are detected, in order.
    assert list(counts["detect"]) == [str(D1), str(D1 + timedelta(days=1))]
    assert counts["detect"][str(D1 + timedelta(days=1))]["transactions"] > 0
    assert run["code_version"] and run["config_version"] and run["policy_version"] != "none"
    assert run["duration_s"] > 0

    # An analyst dismisses a flag.
    flag_id = flags[0][0]
    con = connect(db)
    con.execute(
        "INSERT INTO dispositions VALUES (?, 'dismissed', 'ana', 'known merchant', ?, NULL)",
        [flag_id, datetime(2025, 9, 3, 9, 30)],
    )
    disp_before = con.execute("SELECT * FROM dispositions").fetchall()
    con.close()

    # Rerun the same night: nothing new to ingest, the same flags, the disposition kept.
    flow(as_of=D1 + timedelta(days=1), landing=str(small_trial_landing), db=str(db), report=False)
    rerun = _nightly_rows(db)[-1]
    assert rerun["status"] == "succeeded"
    assert json.loads(rerun["row_counts"])["ingest"]["files_new"] == 0
    assert {i["status"] for i in json.loads(rerun["inputs"])} == {"known"}
    before = {f[0]: f[:11] for f in flags}  # all but status, which follows dispositions
    after = {f[0]: f[:11] for f in _flags(db)}
    assert after == before
    con = connect(db, read_only=True)
    assert con.execute("SELECT * FROM dispositions").fetchall() == disp_before
    con.close()

    # Two nights later: the missed night is backfilled first, in order.
    out = flow(as_of=D1 + timedelta(days=3), landing=str(small_trial_landing), db=str(db),
               report=False)  # fmt: skip
    assert list(out["counts"]["detect"]) == [
        str(D1 + timedelta(days=2)),
        str(D1 + timedelta(days=3)),
    ]
    con = connect(db, read_only=True)
    detected = con.execute(
        "SELECT as_of FROM runs WHERE command = 'run' AND status = 'succeeded' ORDER BY started_at"
    ).fetchall()
    con.close()
    assert [d for (d,) in detected][-2:] == [D1 + timedelta(days=2), D1 + timedelta(days=3)]


@pytest.mark.usefixtures("prefect_harness", "pan_key_env")
def test_failed_run_is_recorded_and_a_crashed_one_closed(tmp_path):
    db = tmp_path / "tg.duckdb"
    con = connect(db)
    con.execute(
        "INSERT INTO runs (run_id, command, started_at, status) "
        "VALUES ('nightly-crashed', 'nightly', ?, 'running')",
        [datetime(2025, 9, 2, 2, 0)],
    )
    con.close()
    with pytest.raises(FileNotFoundError, match="landing folder"):
        nightly_flow()(as_of=D1, landing=str(tmp_path / "missing"), db=str(db), report=False)
    rows = {r["run_id"]: r for r in _nightly_rows(db)}
    assert rows["nightly-crashed"]["status"] == "failed"
    assert "crashed" in rows["nightly-crashed"]["message"]
    (failed,) = [r for r in rows.values() if r["run_id"] != "nightly-crashed"]
    assert failed["status"] == "failed"
    assert "FileNotFoundError" in failed["message"] and "missing" in failed["message"]


HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pipelines.runlock import run_lock
    from pipelines.settings import Settings
    with run_lock(Settings(db_path=Path(sys.argv[1])), "run"):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


@pytest.mark.usefixtures("prefect_harness", "pan_key_env")
def test_nightly_refuses_while_another_process_holds_the_lock(tmp_path, small_trial_landing):
    db = tmp_path / "tg.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockError, match=rf"`run` \(pid {proc.pid}"):
            nightly_flow()(as_of=D1, landing=str(small_trial_landing), db=str(db), report=False)
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=10)
    assert not db.exists() or not _nightly_rows(db)  # refused before touching the store
