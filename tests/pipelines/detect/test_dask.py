"""``--task-runner dask``: the same stored tables as the local runner, and a dead worker retried.

A real 2-worker ``distributed.LocalCluster`` (worker processes), the real
``detect partitions`` Prefect flow with ``prefect_dask.DaskTaskRunner`` under the
session's Prefect harness, on copies of the small simulated trial's store.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from distributed import WorkerPlugin

from pipelines.detect.cluster import DaskCluster, check_task_runner, dask_address
from pipelines.detect.run import run_range
from pipelines.settings import Settings
from pipelines.storage import connect

START = date(2025, 9, 1)
END = START + timedelta(days=3)
#: Tables the detection run writes; ``runs`` is compared without its timings.
RUN_COLUMNS = (
    "run_id, command, as_of, status, inputs, code_version, config_version, policy_version"
)


def _copy(db: Path, dst: Path) -> Path:
    shutil.copy2(db, dst)
    wal = db.with_name(db.name + ".wal")
    if wal.exists():
        shutil.copy2(wal, dst.with_name(dst.name + ".wal"))
    return dst


def _tables(db: Path) -> dict[str, pl.DataFrame]:
    """Every table of the store, rows in a canonical order (runs without timings/counts)."""
    con = connect(db, read_only=True)
    try:
        names = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            ).fetchall()
        ]
        out = {}
        for name in sorted(names):
            sql = f"SELECT {RUN_COLUMNS} FROM runs" if name == "runs" else f"SELECT * FROM {name}"
            df = pl.from_arrow(con.sql(sql).to_arrow_table())
            cols = [c for c, t in df.schema.items() if t != pl.Object]
            # JSON / nested columns as text so every table sorts
            df = df.with_columns(
                [pl.col(c).cast(pl.String) for c, t in df.schema.items() if t.is_nested()]
            )
            out[name] = df.sort(cols, nulls_last=True)
    finally:
        con.close()
    return out


def _cluster(n_workers: int = 2):
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        env={"POLARS_MAX_THREADS": "1"},
    )


def _run(db: Path, **kw):
    settings = Settings.from_env(db=db)
    return run_range(settings, START, END, run_id="same", **kw)


def _assert_same_store(local_db: Path, dask_db: Path, local, dask) -> None:
    for a, b in zip(local, dask, strict=True):
        assert a.counts["partitions"] == 1 and b.counts["partitions"] >= 2
        assert a.counts["transactions"] == b.counts["transactions"] > 0
        assert a.counts["by_behaviour"] == b.counts["by_behaviour"]
    want, got = _tables(local_db), _tables(dask_db)
    assert want.keys() == got.keys()
    for name in want:
        assert want[name].equals(got[name]), f"table {name} differs between local and dask"
    assert want["flags"].height > 0 and want["terminal_day"].height > 0


@pytest.mark.usefixtures("prefect_harness", "pan_key_env")
def test_dask_runner_stores_what_the_local_runner_stores(small_trial_db, tmp_path):
    local_db = _copy(small_trial_db, tmp_path / "local.duckdb")
    dask_db = _copy(small_trial_db, tmp_path / "dask.duckdb")
    local = _run(local_db)
    with _cluster() as cluster:
        dask = _run(
            dask_db,
            task_runner="dask",
            dask_address=cluster.scheduler_address,
            spill_dir=tmp_path / "spill",
        )
        from distributed import Client

        with Client(cluster.scheduler_address) as client:
            # the workers imported what a partition needs, not the flow's side
            heavy = client.run(
                lambda: sorted(
                    m
                    for m in ("duckdb", "sklearn", "models.anomaly")
                    if m in __import__("sys").modules
                )
            )
    assert all(v == [] for v in heavy.values()), heavy
    _assert_same_store(local_db, dask_db, local, dask)
    # nothing left behind in the spill location
    assert not any((tmp_path / "spill").iterdir())


class _KillOnce(WorkerPlugin):
    """Worker plugin: the first worker to start a partition task SIGKILLs its own process.

    ``marker`` (a file) makes it once per test across the worker processes (the
    nanny restarts the killed worker, which registers the plugin again).
    """

    name = "tg-kill-once"

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def transition(self, key, start, finish, **kwargs) -> None:
        import os
        import signal

        if finish != "executing":  # only partition tasks run on this cluster
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.usefixtures("prefect_harness", "pan_key_env")
def test_a_worker_killed_mid_partition_is_retried_and_the_result_unchanged(
    small_trial_db, tmp_path
):
    import cloudpickle
    from distributed import Client

    local_db = _copy(small_trial_db, tmp_path / "local.duckdb")
    dask_db = _copy(small_trial_db, tmp_path / "dask.duckdb")
    local = _run(local_db)
    marker = tmp_path / "killed.pid"
    import sys

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with _cluster() as cluster, Client(cluster.scheduler_address) as client:
            client.register_plugin(_KillOnce(str(marker)))
            dask = _run(dask_db, task_runner="dask", dask_address=cluster.scheduler_address)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert marker.exists(), "no worker was killed: the test did not test anything"
    _assert_same_store(local_db, dask_db, local, dask)


def test_runner_options_are_checked(monkeypatch):
    assert check_task_runner("Dask") == "dask"
    with pytest.raises(ValueError, match="'spark' is not one of local, dask"):
        check_task_runner("spark")
    monkeypatch.delenv("TRIALGUARD_DASK_ADDRESS", raising=False)
    assert dask_address(None) is None
    monkeypatch.setenv("TRIALGUARD_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    assert dask_address(None) == "tcp://10.0.0.5:8786"
    assert dask_address("tcp://h:1") == "tcp://h:1"
    with pytest.raises(ValueError, match="no protocol"):
        dask_address("10.0.0.5:8786")


def test_partition_count_follows_the_cluster_and_the_volume():
    two = DaskCluster("tcp://x:1", workers=2, threads=2, threads_per_worker=1)
    assert two.partitions(0, 500_000) == 1
    assert two.partitions(1, 500_000) == 1
    assert two.partitions(360, 500_000) == 2  # every worker thread busy on a small day
    assert two.partitions(10_000_000, 500_000) == 20  # none over 500k rows
    wide = DaskCluster("tcp://x:1", workers=4, threads=16, threads_per_worker=4)
    assert wide.partitions(10_000_000, 500_000) == 80  # a worker holds 4 partitions at once
    assert wide.partitions(1_000, 500_000) == 16


@pytest.mark.slow  # the nightly's ingest (hashing the landing) + two nights on the cluster
@pytest.mark.usefixtures("prefect_harness", "pan_key_env")
def test_nightly_flow_runs_its_partitions_on_dask(small_trial_db_copy, small_trial_landing):
    # The nightly flow's detect task runs the `detect partitions` sub-flow on the cluster.
    from pipelines.flows import nightly_flow

    with _cluster() as cluster:
        out = nightly_flow()(
            as_of=START + timedelta(days=1),
            landing=str(small_trial_landing),
            db=str(small_trial_db_copy),
            report=False,
            task_runner="dask",
            dask_address=cluster.scheduler_address,
        )
    nights = out["counts"]["detect"]
    assert list(nights) == [str(START), str(START + timedelta(days=1))]  # backfilled first
    assert all(c["partitions"] >= 2 and c["transactions"] > 0 for c in nights.values())
    con = connect(small_trial_db_copy, read_only=True)
    try:
        status = con.execute(
            "SELECT status FROM runs WHERE command = 'nightly' ORDER BY started_at DESC LIMIT 1"
        ).fetchone()[0]
    finally:
        con.close()
    assert status == "succeeded"
