"""A day processed in terminal partitions gives what one pass gives (issue 4)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import polars as pl
import pytest

from pipelines.detect import fanout, partition, spill
from pipelines.detect import run as detect
from pipelines.detect import store as readers
from pipelines.storage import connect

_spec = importlib.util.spec_from_file_location(
    "_test_detect", Path(__file__).with_name("test_detect.py")
)
T = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(T)


def test_partitioned_reads_cover_every_row_once(tmp_path):
    store = T.build_store(tmp_path / "s.duckdb")
    con = connect(store.db_path, read_only=True)
    try:
        whole = readers.read_day_transactions(con, T.F.DAY)
        parts = [readers.read_day_transactions(con, T.F.DAY, partition=(i, 4)) for i in range(4)]
        with pytest.raises(ValueError, match="0 <= index < count"):
            readers.read_day_transactions(con, T.F.DAY, partition=(4, 4))
    finally:
        con.close()
    assert sum(p.height > 0 for p in parts) > 1
    # A terminal's rows all land in one partition.
    owners = pl.concat(
        [
            p.select("terminal_id").unique().with_columns(pl.lit(i).alias("part"))
            for i, p in enumerate(parts)
        ]
    )
    assert owners["terminal_id"].is_unique().all()
    got = pl.concat(parts).sort("txn_id")
    assert got.equals(whole.sort("txn_id"))


def test_spilled_partitions_cover_every_row_once(tmp_path):
    store = T.build_store(tmp_path / "s.duckdb")
    con = connect(store.db_path, read_only=True)
    try:
        whole = readers.read_day_transactions(con, T.F.DAY)
        # small batches: a partition is made of pieces of several batches
        folders = spill.spill_day_transactions(con, T.F.DAY, tmp_path / "spill", 4, batch_rows=64)
        reads = [readers.read_day_transactions(con, T.F.DAY, partition=(i, 4)) for i in range(4)]
        with pytest.raises(ValueError, match="count of partitions"):
            spill.spill_day_transactions(con, T.F.DAY, tmp_path / "bad", 0)
    finally:
        con.close()
    assert len(folders) == 4
    parts = [partition.load_spilled(f) for f in folders]
    parts = [p for p in parts if p is not None]
    assert len(parts) > 1
    assert all(len(list(f.glob("*.arrow"))) <= 1 for f in folders)
    ids = pl.concat([p.select("terminal_id").unique() for p in parts])
    assert ids["terminal_id"].is_unique().all()
    got = pl.concat(parts).sort("txn_id")
    assert got.equals(whole.sort("txn_id"))
    # partition i of the spill is partition i of the read: the same terminal hash
    for folder, read in zip(folders, reads, strict=True):
        spilled = partition.load_spilled(folder)
        if read.height == 0:
            assert spilled is None
        else:
            assert spilled.sort("txn_id").equals(read.sort("txn_id"))


def test_run_workers_setting(monkeypatch):
    monkeypatch.setenv("TRIALGUARD_RUN_WORKERS", "3")
    assert fanout.run_workers() == 3
    monkeypatch.setenv("TRIALGUARD_RUN_WORKERS", "0")
    with pytest.raises(ValueError, match="TRIALGUARD_RUN_WORKERS='0'"):
        fanout.run_workers()
    monkeypatch.delenv("TRIALGUARD_RUN_WORKERS")
    # two workers by default, one on a one-core machine
    assert fanout.run_workers() == min(2, os.cpu_count() or 1)


def test_partitioned_run_equals_one_pass(tmp_path, monkeypatch):
    store = T.build_store(tmp_path / "s.duckdb")
    one = detect.run_range(store, T.F.DAY, T.DAY2, persist=False)
    # 360 rows a day, partitions of 100 // 2 workers = 50 rows -> 8 partitions
    monkeypatch.setattr(detect, "PARTITION_ROWS", 100)
    monkeypatch.setenv("TRIALGUARD_RUN_WORKERS", "2")  # spilled, two worker processes
    many = detect.run_range(store, T.F.DAY, T.DAY2, persist=False)
    for a, b in zip(one, many, strict=True):
        assert a.counts["partitions"] == 1 and b.counts["partitions"] == 8
        assert a.counts["transactions"] == b.counts["transactions"] == 360
        key = ["terminal_id", "behaviour", "day"]
        assert a.detections.sort(key).equals(b.detections.sort(key))
        cols = [c for c in a.flags.columns if c != "run_id"]
        assert a.flags.select(cols).sort("flag_id").equals(b.flags.select(cols).sort("flag_id"))
    assert one[-1].flags.height >= 1


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc only")
def test_peak_rss_is_the_run_process_own_not_its_parent(tmp_path):
    # Issue 4: `bench run` generated 10 M rows, then measured the run in a child whose
    # ru_maxrss carried the generator's peak over fork + exec. A parent touches 600 MiB,
    # frees it, then starts a child: the child's peak must be its own.
    import subprocess
    import sys

    child = (
        "import resource; from pipelines.detect.run import _rss_mib; "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, _rss_mib()[1])"
    )
    parent = (
        "import subprocess, sys\n"
        "x = b'x' * (600 * 2**20)\n"
        "del x\n"
        f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True,"
        " text=True, check=True).stdout)\n"
    )
    root = str(Path(detect.__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, "-c", parent],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": root},
    ).stdout.split()
    inherited, own = float(out[0]), float(out[1])
    if inherited < 600:
        pytest.skip(f"this kernel does not carry ru_maxrss over exec ({inherited} MiB)")
    assert own < 500, f"child peak {own} MiB includes its parent's 600 MiB"


def test_worker_environment_is_set_inside_the_block_and_restored(monkeypatch):
    monkeypatch.setenv("POLARS_MAX_THREADS", "7")
    monkeypatch.delenv("TG_UNSET_FOR_TEST", raising=False)
    with fanout._environ(POLARS_MAX_THREADS="1", TG_UNSET_FOR_TEST="x"):
        assert os.environ["POLARS_MAX_THREADS"] == "1"
        assert os.environ["TG_UNSET_FOR_TEST"] == "x"
    assert os.environ["POLARS_MAX_THREADS"] == "7"
    assert "TG_UNSET_FOR_TEST" not in os.environ


def test_worker_module_imports_neither_duckdb_nor_sklearn():
    # Each worker process imports pipelines.detect.partition once per run date: scikit-learn
    # (with scipy and pandas) and DuckDB cost ~3 s of CPU per worker (docs/detection.md).
    import subprocess
    import sys

    code = (
        "import sys, pipelines.detect.partition; "
        "print(sorted(m for m in ('sklearn', 'duckdb', 'pandas', 'prefect') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
