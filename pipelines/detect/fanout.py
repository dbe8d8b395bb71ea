"""The per-terminal step of a big day fanned out: spilled partitions, worker processes.

The local runner: a spawn process pool of :func:`run_workers` processes, each
running :func:`pipelines.detect.partition._detect_spilled` on one spilled
partition at a time.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

from pipelines.detect.partition import _detect_spilled
from pipelines.detect.spill import _only, _spill_dir, spill_day_transactions


def run_workers() -> int:
    """Processes for the per-terminal partitions: ``TRIALGUARD_RUN_WORKERS``, default 2.

    The default is 2, or 1 on a one-core machine. With 1 the partitions of a big
    day are processed one after another in this process (polars still uses every
    core inside each). With more, a spawn process pool runs them, each worker with
    its share of the cores, on partitions of ``PARTITION_ROWS // workers`` rows.
    A day small enough for one partition never starts the pool. Measured on 2
    cores, 10M rows: 55 s and 3.4 GiB for the process tree with 2 workers, 65 s and
    2.4 GiB with 1 (docs/detection.md, "Speed").
    """
    text = os.environ.get("TRIALGUARD_RUN_WORKERS", "").strip()
    if not text:
        return min(2, os.cpu_count() or 1)
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(
            f"TRIALGUARD_RUN_WORKERS={text!r} is not a count of processes; "
            "give an integer >= 1 (1 = no worker processes; default 2)"
        )
    return n


@contextlib.contextmanager
def _environ(**values: str):
    """Set environment variables for the processes started inside the block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _detect_partitioned(
    con: duckdb.DuckDBPyConnection,
    settings,
    as_of: date,
    parts: int,
    lookback: int,
    inputs: tuple,
    timings: dict[str, float],
    cluster=None,
    spill_dir: str | Path | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, int, set[str]]:
    """The per-terminal step of a big day: one read, ``parts`` partitions, workers.

    The workers are local processes (:func:`run_workers`), or the Dask cluster
    ``cluster`` (:class:`pipelines.detect.cluster.DaskCluster`): then each partition's
    side inputs are written into its folder, every partition is a Prefect task on
    the cluster and comes back as Arrow bytes (:mod:`pipelines.detect.remote`).
    ``spill_dir`` (default beside the store) must be readable by every worker.
    """
    registry, pol, config, implausible, history, telemetry = inputs
    root = str(spill_dir) if spill_dir is not None else _spill_dir(settings)
    if root is not None:
        Path(root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tg-run-", dir=root) as tmp:
        t = time.perf_counter()
        paths = spill_day_transactions(con, as_of, Path(tmp) / "day", parts, lookback)
        paths = [p for p in paths if any(p.glob("*.arrow"))]  # skip empty partitions
        timings["read_s"] += time.perf_counter() - t
        t = time.perf_counter()

        def args(path: Path) -> tuple:
            ids = (
                pl.read_ipc(sorted(path.glob("*.arrow")), columns=["terminal_id"])
                .get_column("terminal_id")
                .unique()
            )
            return (
                path,
                _only(registry, ids),
                pol,
                config,
                _only(implausible, ids),
                _only(history, ids),
                _only(telemetry, ids),
            )

        workers = min(run_workers(), len(paths))
        if cluster is not None:
            from pipelines.detect.cluster import detect_on_cluster

            results = detect_on_cluster(cluster, as_of, paths, pol, config, args)
        elif workers > 1:
            ctx = multiprocessing.get_context("spawn")
            # each worker gets its share of the cores for polars (read when it starts):
            # two workers with every core each oversubscribed the machine
            threads = str(max(1, (os.cpu_count() or 1) // workers))
            with (
                _environ(POLARS_MAX_THREADS=threads),
                ProcessPoolExecutor(workers, mp_context=ctx) as pool,
            ):
                futures = [pool.submit(_detect_spilled, *args(p)) for p in paths]
                results = [f.result() for f in futures]
        else:
            results = [_detect_spilled(*args(p)) for p in paths]
        timings["per_terminal_s"] = time.perf_counter() - t
    if not results:
        raise RuntimeError(
            f"{as_of}: the day's transactions were counted but none was read back from the "
            "spilled partitions; check the free space of the store's folder and run again"
        )
    day = pl.concat([r[0] for r in results]).sort("terminal_id", "local_date")
    detections = pl.concat([r[1] for r in results])
    n_txns = sum(r[2] for r in results)
    file_ids: set[str] = set().union(*(r[3] for r in results))
    return day, detections, n_txns, file_ids
