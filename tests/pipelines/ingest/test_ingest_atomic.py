"""Kill-and-rerun: a process killed mid-file leaves the store as if that file had not started."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from pipelines.ingest.load import ingest_paths
from pipelines.settings import Settings

_spec = importlib.util.spec_from_file_location(
    "_ingest_inputs", Path(__file__).with_name("_ingest_inputs.py")
)
inp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inp)

KEY = "test-key-0123456789abcdef0123456789abcdef"
ROOT = Path(__file__).resolve().parents[3]
# every table but runs (a killed run stays "running": it is the record of that attempt)
CONTENT = {
    "transactions": "*",
    "terminals": "*",
    "terminal_events": "*",
    "fraud_reports": "*",
    "policies": "* EXCLUDE (loaded_at)",
    "quarantine": "* EXCLUDE (quarantined_at)",
    "ingest_manifest": "* EXCLUDE (started_at, finished_at)",
}
SCRIPT = (
    "import sys; from pipelines.ingest.load import ingest_paths; "
    "from pipelines.settings import Settings; "
    "ingest_paths(Settings.from_env(db=sys.argv[1]), sys.argv[2:], gate=False)"
)


def snapshot(db: Path) -> dict[str, list]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {
            t: sorted(con.execute(f"SELECT {cols} FROM {t}").fetchall(), key=repr)
            for t, cols in CONTENT.items()
        }
    finally:
        con.close()


def test_kill_mid_file_then_rerun_equals_clean_ingest(tmp_path):
    pans = inp.make_pans(20)
    a = inp.write(inp.transactions(50, pans), tmp_path / "a.csv")
    rows = inp.transactions(300, pans, 50)
    rows[3]["amount_minor"] = "1.5"
    rows.append(dict(rows[0]))
    b = inp.write(rows, tmp_path / "b.csv")
    killed_db = tmp_path / "killed.duckdb"
    env = dict(os.environ, TRIALGUARD_PAN_KEY=KEY, TRIALGUARD_INGEST_PAUSE="b.csv:write")
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(killed_db), str(a), str(b)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "ingest paused at b.csv:write" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
        assert "ingest paused" in line, "the ingest never reached the pause point"
        # b.csv's rows are inserted but not committed: kill the process now
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the killed file was staged in the scratch database beside the store: tokens only
    staging = killed_db.with_name(f".{killed_db.name}.staging")
    wal = Path(f"{staging}.wal")
    staged = staging.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert len(staged) > 0
    assert not [p for p in pans if p.encode() in staged]
    after_kill = snapshot(killed_db)
    assert {r[0] for r in after_kill["transactions"]} == {f"T{i:06d}" for i in range(50)}
    assert [r[1] for r in after_kill["ingest_manifest"]] == [str(a)]

    settings = Settings(db_path=killed_db, pan_key_env=KEY)
    rerun = ingest_paths(settings, [a, b], gate=False)
    assert [f.status for f in rerun.files][:2] == ["skipped", "loaded"]
    assert not staging.exists()  # the rerun replaced the leftover and deleted it at the end
    clean = Settings(db_path=tmp_path / "clean.duckdb", pan_key_env=KEY)
    ingest_paths(clean, [a, b], gate=False)
    assert snapshot(killed_db) == snapshot(clean.db_path)
