"""Detection on a Dask cluster through prefect-dask (``--task-runner dask``).

The per-terminal step of a night is the only part that leaves the flow's process:
the day is spilled once in terminal partitions (:mod:`pipelines.detect.spill`),
each partition's side inputs are written beside its rows
(:func:`pipelines.detect.remote.write_inputs`), and the ``detect partitions``
Prefect flow submits one ``detect partition`` task per folder through
``prefect_dask.DaskTaskRunner``. Workers read their folder and send back Arrow
bytes; peer groups, the leakage detectors and every DuckDB write stay in the
calling process.

Without an address :func:`dask_cluster` starts a ``distributed.LocalCluster``
sized to the machine (one single-threaded worker process per core); with one
(``--dask-address`` or ``TRIALGUARD_DASK_ADDRESS``) it connects to a running
scheduler. A worker that dies mid-partition: the scheduler gives its task to
another worker (Dask's rescheduling); if Dask gives up (``KilledWorker``) or the
connection drops, the flow submits the partition again as a new Prefect task run,
up to :data:`RESUBMITS` times. Partitions are pure functions of their folder, so
a retried partition gives the same rows.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

log = logging.getLogger(__name__)

TASK_RUNNERS = ("local", "dask")
ADDRESS_ENV = "TRIALGUARD_DASK_ADDRESS"
#: Times the flow submits a partition again after its worker died and Dask gave up.
RESUBMITS = 2
#: Seconds to wait for a scheduler to have at least one worker.
WORKER_WAIT_S = 60


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """``--task-runner``, ``--dask-address``, ``--spill-dir`` (``trialguard run`` and ``nightly``)."""
    parser.add_argument(
        "--task-runner",
        choices=("local", "dask"),
        default="local",
        help="where the per-terminal partitions run: local worker processes (default) or "
        "a Dask cluster through prefect-dask",
    )
    parser.add_argument(
        "--dask-address",
        default=None,
        help="Dask scheduler, e.g. tcp://10.0.0.5:8786 (default $TRIALGUARD_DASK_ADDRESS; "
        "none: a LocalCluster sized to this machine)",
    )
    parser.add_argument(
        "--spill-dir",
        default=None,
        help="folder the day's partitions are spilled to, readable by every worker "
        "(default $TRIALGUARD_SPILL_DIR, else beside the store)",
    )


def check_task_runner(value: str) -> str:
    """``local`` or ``dask``; anything else is refused with what is accepted."""
    text = str(value).strip().lower()
    if text not in TASK_RUNNERS:
        raise ValueError(
            f"task runner {value!r} is not one of {', '.join(TASK_RUNNERS)}; give "
            "--task-runner local (worker processes on this machine, the default) or "
            "--task-runner dask (a Dask cluster through prefect-dask)"
        )
    return text


def dask_address(value: str | None = None) -> str | None:
    """The scheduler address: ``value``, else ``$TRIALGUARD_DASK_ADDRESS``, else ``None``.

    ``None`` means: start a LocalCluster sized to this machine.
    """
    text = (value or os.environ.get(ADDRESS_ENV, "") or "").strip()
    if not text:
        return None
    if "://" not in text:
        raise ValueError(
            f"Dask scheduler address {text!r} has no protocol; give e.g. tcp://10.0.0.5:8786 "
            f"(--dask-address or {ADDRESS_ENV})"
        )
    return text


@dataclass(frozen=True)
class DaskCluster:
    """A Dask cluster the run submits partitions to."""

    address: str
    workers: int
    threads: int
    threads_per_worker: int
    dashboard: str | None = None

    def partitions(self, n_rows: int, partition_rows: int) -> int:
        """Partitions of a day of ``n_rows`` rows: every worker thread busy, none too big.

        At least one per worker thread (so the cluster is used even on a small day),
        more when a partition would exceed ``partition_rows // threads_per_worker``
        rows (a worker process holds one partition per thread).
        """
        if n_rows <= 0:
            return 1
        per = max(1, int(partition_rows) // max(1, self.threads_per_worker))
        return max(math.ceil(n_rows / per), min(self.threads, n_rows), 1)


def _prefect_api_env() -> dict[str, str]:
    """``PREFECT_API_URL`` for the workers of a LocalCluster: this process's API.

    Without a configured server Prefect runs a temporary one per process: each
    worker would start its own (~10 s each, its task runs recorded nowhere). The
    workers of a LocalCluster are on this machine, so they report to this
    process's temporary server instead (started here if needed). Workers on other
    machines need ``PREFECT_API_URL`` of a real server (docs/operations.md).
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    url = settings.api.url
    if not url and settings.server.ephemeral.enabled:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()
        url = server.api_url
    return {"PREFECT_API_URL": str(url)} if url else {}


@contextlib.contextmanager
def dask_cluster(address: str | None = None, workers: int | None = None) -> Iterator[DaskCluster]:
    """Connect to the scheduler at ``address``, or start a LocalCluster for the block.

    The LocalCluster has ``workers`` (default one per core) single-threaded worker
    processes, each with its share of the cores for polars.
    """
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if address is None:
            cores = os.cpu_count() or 1
            n = int(workers or cores)
            local = stack.enter_context(
                LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    env={"POLARS_MAX_THREADS": str(max(1, cores // n)), **_prefect_api_env()},
                )
            )
            address = local.scheduler_address
        client = stack.enter_context(Client(address, set_as_default=False))
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (TimeoutError, OSError) as exc:
            raise RuntimeError(
                f"the Dask scheduler at {address} has no worker after {WORKER_WAIT_S} s; "
                f"start one on each machine with `dask worker {address}` "
                "(docs/operations.md, 'Running on a Dask cluster')"
            ) from exc
        nthreads = client.nthreads()
        cluster = DaskCluster(
            address=address,
            workers=len(nthreads),
            threads=sum(nthreads.values()),
            threads_per_worker=max(nthreads.values()),
            dashboard=client.dashboard_link,
        )
        log.info(
            "Dask cluster %s: %d workers, %d threads; dashboard %s",
            address,
            cluster.workers,
            cluster.threads,
            cluster.dashboard,
        )
        yield cluster


def detect_on_cluster(
    cluster: DaskCluster,
    as_of: date,
    paths: list[Path],
    pol: pl.DataFrame,
    config: dict[str, Any],
    args: Callable[[Path], tuple],
) -> list[tuple[pl.DataFrame, pl.DataFrame, int, set[str]]]:
    """Results of :func:`pipelines.detect.partition._detect_spilled` for each folder, on Dask.

    ``args(path)`` gives the partition's ``_detect_spilled`` arguments (path,
    registry, policies, config, implausible, history, telemetry); its frames are
    written into the folder for the worker.
    """
    from pipelines.detect.remote import POLICIES_FILE, from_ipc, write_inputs

    if not paths:
        return []
    pol.write_ipc(paths[0].parent / POLICIES_FILE, compression="lz4")
    for p in paths:
        _path, registry, _pol, _config, implausible, history, telemetry = args(p)
        write_inputs(
            p,
            {
                "registry": registry,
                "implausible": implausible,
                "history": history,
                "telemetry": telemetry,
            },
        )
    out = partitions_flow(cluster.address)(
        day=str(as_of), folders=[str(p.resolve()) for p in paths], config=config
    )
    return [
        (from_ipc(r["day"]), from_ipc(r["detections"]), int(r["transactions"]), set(r["file_ids"]))
        for r in out
    ]


def _partitions_body(day: str, folders: list[str], config: dict) -> list[dict]:
    """One ``detect partition`` task per folder on the Dask cluster; results in folder order."""
    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError
    from prefect import get_run_logger

    task = _partition_task()
    futures = [task.submit(f, config) for f in folders]
    out = []
    for i, folder in enumerate(folders):
        for attempt in range(RESUBMITS + 1):
            try:
                out.append(futures[i].result())
                break
            except (KilledWorker, CommClosedError) as exc:
                if attempt == RESUBMITS:
                    raise RuntimeError(
                        f"{day}: partition {folder} lost its worker {RESUBMITS + 1} times "
                        f"({type(exc).__name__}: {exc}); check the workers' memory (the "
                        "Dask dashboard's Workers tab) and rerun the date"
                    ) from exc
                get_run_logger().warning(
                    "%s: the worker of partition %s died (%s); submitting it again",
                    day,
                    folder,
                    type(exc).__name__,
                )
                futures[i] = task.submit(folder, config)
    return out


_FLOW = None
_TASK = None


def _partition_task():
    global _TASK
    if _TASK is None:
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        from pipelines.detect.remote import detect_folder

        _TASK = task(
            name="detect partition", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE
        )(detect_folder)
    return _TASK


def partitions_flow(address: str):
    """The ``detect partitions`` flow with a ``DaskTaskRunner`` on the scheduler at ``address``."""
    global _FLOW
    from prefect_dask import DaskTaskRunner

    if _FLOW is None:
        from prefect import flow

        _FLOW = flow(
            name="detect partitions", flow_run_name="detect partitions {day}", log_prints=True
        )(_partitions_body)
    return _FLOW.with_options(task_runner=DaskTaskRunner(address=address))
