"""Ingest never spills to disk (raw card numbers would land there): no file holds a PAN."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "_ingest_inputs", Path(__file__).with_name("_ingest_inputs.py")
)
inp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inp)

KEY = "test-key-0123456789abcdef0123456789abcdef"
ROOT = Path(__file__).resolve().parents[3]
SCRIPT = (
    "import sys; from pipelines.ingest.load import ingest_paths; "
    "from pipelines.settings import Settings; "
    "ingest_paths(Settings.from_env(db=sys.argv[1]), sys.argv[2:], gate=False)"
)
_DIGIT_RUN = re.compile(rb"[0-9]{16,}")


def _scan(folder: Path, pans: list[str]) -> dict[str, int]:
    known = {p.encode() for p in pans}  # all 16 digits
    hits: dict[str, int] = {}
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        data = p.read_bytes()
        found = {
            run[i : i + 16]
            for run in _DIGIT_RUN.findall(data)
            for i in range(len(run) - 15)
            if run[i : i + 16] in known
        }
        if found:
            hits[p.name] = len(found)
    return hits


@pytest.mark.parametrize("limit", ["24MB", "512MB"])
def test_ingest_never_spills_card_numbers_to_disk(tmp_path, limit):
    """Under a tight memory limit the file is rejected, never spilled; either way no PAN lands."""
    pans = inp.make_pans(20_000, seed=11)
    rows = inp.transactions(40_000, pans)
    for i, row in enumerate(rows):
        row["note"] = f"paid with {pans[(i + 1) % len(pans)]} ok"  # free text: redacted
    rows[7]["amount_minor"] = "1.5"  # quarantined with its pan and note
    path = inp.write(rows, tmp_path / "big.csv")
    db = tmp_path / "wh" / "t.duckdb"
    env = dict(os.environ, TRIALGUARD_PAN_KEY=KEY, TRIALGUARD_INGEST_MEMORY_LIMIT=limit)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(db), str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    status, message = con.execute(
        "SELECT status, message FROM ingest_manifest WHERE source_path LIKE '%big.csv'"
    ).fetchone()
    con.close()
    if status == "rejected":
        assert "memory limit" in message and "TRIALGUARD_INGEST_MEMORY_LIMIT" in message
    else:
        assert status == "loaded"
    spill_dir = db.parent / (db.name + ".tmp")
    assert not spill_dir.exists() or not any(spill_dir.iterdir()), "ingest spilled to disk"
    assert _scan(db.parent, pans) == {}
    assert _scan(tmp_path, pans).keys() <= {"big.csv"}  # only the input holds them
