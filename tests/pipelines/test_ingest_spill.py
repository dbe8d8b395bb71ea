"""With a small DuckDB memory limit the ingest spills to disk: no spill file holds a PAN in clear."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "_ingest_inputs", Path(__file__).with_name("_ingest_inputs.py")
)
inp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inp)

KEY = "test-key-0123456789abcdef0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (
    "import sys; from pipelines.ingest import ingest_paths; "
    "from pipelines.settings import Settings; "
    "ingest_paths(Settings.from_env(db=sys.argv[1]), sys.argv[2:], gate=False)"
)
_DIGIT_RUN = re.compile(rb"[0-9]{16,}")


@pytest.mark.xfail(
    strict=False,
    reason="known gap: at a tiny memory_limit DuckDB may also spill transient buffers (CSV "
    "reader buffers, the redaction UDF's input vectors) that hold raw text; the staging "
    "table and the numbering window hold no PAN (see docs/ingest.md, Card numbers)",
)
def test_spilled_staging_holds_no_pan(tmp_path):
    pans = inp.make_pans(20_000, seed=11)
    rows = inp.transactions(40_000, pans)
    for i, row in enumerate(rows):
        row["note"] = f"paid with {pans[(i + 1) % len(pans)]} ok"  # free text: redacted
    rows[7]["amount_minor"] = "1.5"  # quarantined with its pan and note
    path = inp.write(rows, tmp_path / "big.csv")
    db = tmp_path / "wh" / "t.duckdb"
    env = dict(
        os.environ,
        TRIALGUARD_PAN_KEY=KEY,
        TRIALGUARD_INGEST_PAUSE="big.csv:write",
        TRIALGUARD_INGEST_MEMORY_LIMIT="32MB",
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(db), str(path)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        line = ""
        while "ingest paused at big.csv:write" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
        assert "ingest paused" in line, "the ingest never reached the pause point"
        # paused after the inserts, inside the transaction: the staging table is alive
        blobs = {p: p.read_bytes() for p in db.parent.rglob("*") if p.is_file()}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    spilled = [p for p in blobs if p.parent.name == db.name + ".tmp" and p.suffix == ".tmp"]
    assert sum(len(blobs[p]) for p in spilled) > 1_000_000, "nothing spilled; raise the rows"
    known = {p.encode() for p in pans}  # all 16 digits
    for p, data in blobs.items():
        found = {
            run[i : i + 16]
            for run in _DIGIT_RUN.findall(data)
            for i in range(len(run) - 15)
            if run[i : i + 16] in known
        }
        assert not found, f"{len(found)} test PAN(s) found in {p.name}"
