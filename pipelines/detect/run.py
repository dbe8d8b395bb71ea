"""``trialguard run``: detect behaviours for a date (or a range) and write flag episodes.

One run date ``D``:

1. read the day's transactions (with the originals refunds point at), the
   registry rows known by the end of ``D``, the latest version of every policy;
2. per terminal (:func:`detect_partition`, no I/O, could run per partition on
   Dask): per-transaction signals, terminal-day aggregates with evidence, rule
   detections;
3. cross-terminal: 7/30-day history from the ``terminal_day`` table, peer groups
   and the peer anomaly model, the leakage detectors (``pipelines.detect.leakage``);
4. merge detections into ``flags`` (``models.episodes``), write ``at_risk_cards``,
   upsert the day's ``terminal_day`` rows and record the run in ``runs``.

With ``persist=False`` nothing is written (backtests); the aggregates and flags
of earlier days of the same :func:`run_range` are kept in memory instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from features.peers import with_peer_features
from features.policy import policy_frame
from features.schema import DETECTION_SCHEMA
from models.anomaly import anomaly_detections, anomaly_view
from models.config import config_version, load_config
from models.episodes import FLAG_FRAME_SCHEMA, merge_detections
from pipelines.detect.fanout import _detect_partitioned, run_workers
from pipelines.detect.partition import (  # noqa: F401  (re-exported: the per-terminal step's API)
    HISTORY_COLUMNS,
    _detect_frame,
    _detect_spilled,
    detect_partition,
    load_spilled,
    with_history,
)
from pipelines.detect.store import (
    HISTORY_DAYS,
    load_policies,
    policy_version,
    read_day_transactions,
    read_dispositions,
    read_flags,
    read_history,
    read_implausible,
    read_registry,
    read_telemetry,
)
from pipelines.detect.write import _at_risk_rows, _flags_as_table, _record_run, _write
from pipelines.version import code_version

log = logging.getLogger(__name__)

#: Largest number of a day's transactions handled by one call of :func:`detect_partition`:
#: bigger days are read once, spilled in terminal partitions of about this size and
#: processed by :func:`run_workers` processes, so the per-terminal step's memory does
#: not grow with the day's volume (a worker peaks at about 1 GiB on 500 000 rows).
PARTITION_ROWS = 500_000


@dataclass
class DetectionResult:
    """What one run date produced.

    ``detections`` has :data:`features.schema.DETECTION_SCHEMA`; ``flags`` holds
    the flags the run created or extended, with the columns of the ``flags``
    table (``reasons`` and ``evidence`` as JSON text); ``at_risk`` the
    ``at_risk_cards`` rows; ``counts`` row counts and timings.
    """

    as_of: date
    run_id: str
    detections: pl.DataFrame
    flags: pl.DataFrame
    at_risk: pl.DataFrame
    counts: dict[str, Any]


@dataclass
class _Memory:
    """Aggregates and flags of earlier days of an in-memory (``persist=False``) range."""

    terminal_day: list[pl.DataFrame] = field(default_factory=list)
    flags: pl.DataFrame | None = None
    at_risk: pl.DataFrame | None = None


def _leakage(con, as_of: date, config: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Detections and at-risk cards of ``pipelines.detect.leakage`` (empty if it is not built yet)."""
    try:
        from pipelines.detect.leakage import run_leakage_detectors
    except ModuleNotFoundError as exc:
        if exc.name not in (
            "pipelines.detect.leakage",
            "models.compromise",
            "models.hotspot",
            "models.exposure",
        ):
            raise
        log.warning(
            "pipelines.detect.leakage is not available; skipping cross-terminal leakage detectors"
        )
        return pl.DataFrame(schema=DETECTION_SCHEMA), None
    det, at_risk = run_leakage_detectors(con, as_of, config)
    return det.select(DETECTION_SCHEMA.names()).cast(dict(DETECTION_SCHEMA)), at_risk


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB (Linux ``/proc``; else peak only).

    The peak is ``VmHWM``, not ``getrusage``'s ``ru_maxrss``: Linux carries a
    parent's ``ru_maxrss`` over fork + exec into the child, so a run started by a
    big process (e.g. ``trialguard bench run`` after generating 10 M rows)
    reported the parent's peak as its own (issue 4: 7.2 GiB, really 2.4 GiB).
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    found: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    found[line[:5]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    if "VmRSS" not in found:
        return peak, peak
    return found["VmRSS"], found.get("VmHWM", peak)


def _run_one(
    settings,
    as_of: date,
    *,
    con: duckdb.DuckDBPyConnection,
    config: dict[str, Any],
    policies_override: dict | None,
    persist: bool,
    run_id: str | None,
    memory: _Memory | None,
    cluster=None,
    spill_dir: str | Path | None = None,
) -> DetectionResult:
    t0 = time.perf_counter()
    started = datetime.now()
    run_id = run_id or f"run-{as_of.isoformat()}-{uuid.uuid4().hex[:8]}"
    policies = load_policies(con)
    if policies_override:
        policies.update(policies_override)
    cfg_version, pol_version = config_version(config), policy_version(policies)
    if persist:
        _record_run(
            con,
            run_id,
            as_of,
            started,
            status="running",
            code_version=code_version(),
            config_version=cfg_version,
            policy_version=pol_version,
        )
    try:
        timings: dict[str, float] = {}
        # Resident memory (current, MiB) after each step and the process's peak so far.
        rss: dict[str, float] = {}

        def mark(step: str) -> None:
            rss[f"rss_{step}_mib"], rss["peak_rss_mib"] = _rss_mib()

        t = time.perf_counter()
        n_day = con.execute(
            "SELECT count(*) FROM transactions WHERE local_date = ?", [as_of]
        ).fetchall()[0][0]
        # with several workers each holds one partition: smaller ones keep the rows
        # in flight (and so the process tree's memory) about the same
        if cluster is not None:  # Dask: partitions follow the cluster's threads and the volume
            parts = cluster.partitions(int(n_day), PARTITION_ROWS)
        else:
            parts = max(1, -(-int(n_day) // (PARTITION_ROWS // run_workers())))
        registry = read_registry(con, as_of)
        telemetry = read_telemetry(con, as_of, registry, config)
        implausible = read_implausible(con, as_of, config)
        history = read_history(con, as_of)
        if memory is not None and memory.terminal_day:
            mem = pl.concat([d.select(history.columns) for d in memory.terminal_day]).filter(
                pl.col("local_date") >= as_of - timedelta(days=HISTORY_DAYS),
                pl.col("local_date") < as_of,
            )
            history = pl.concat(
                [history.filter(~pl.col("local_date").is_in(mem["local_date"].unique())), mem]
            )
        timings["read_s"] = time.perf_counter() - t
        mark("inputs")

        # Per-terminal step. A big day is read once, split in terminal partitions of
        # about PARTITION_ROWS transactions (spilled next to the store), and the
        # partitions are processed by up to run_workers() processes: memory follows
        # the partition, not the day.
        pol = policy_frame(policies, config["default_policy"])
        lookback = int(config["cash_out"]["refund_lookback_days"])
        if parts == 1 and (cluster is None or n_day == 0):
            t = time.perf_counter()
            txns = read_day_transactions(con, as_of, lookback)
            timings["read_s"] += time.perf_counter() - t
            t = time.perf_counter()
            day, detections, n_txns, file_ids = _detect_frame(
                txns, registry, pol, config, implausible, history, telemetry
            )
            del txns
            timings["per_terminal_s"] = time.perf_counter() - t
        else:
            day, detections, n_txns, file_ids = _detect_partitioned(
                con,
                settings,
                as_of,
                parts,
                lookback,
                (registry, pol, config, implausible, history, telemetry),
                timings,
                cluster=cluster,
                spill_dir=spill_dir,
            )
        mark("per_terminal")

        t = time.perf_counter()
        day = with_peer_features(day.lazy(), int(config["anomaly"]["min_peers"])).collect()
        view = anomaly_view(day, config)
        detections = anomaly_detections(detections, view, day, config)
        timings["peers_anomaly_s"] = time.perf_counter() - t
        mark("peers_anomaly")

        t = time.perf_counter()
        leak_det, at_risk = _leakage(con, as_of, config)
        detections = pl.concat([detections, leak_det]).sort("terminal_id", "behaviour")
        timings["leakage_s"] = time.perf_counter() - t
        mark("leakage")

        t = time.perf_counter()
        gap = int(config["episodes"]["gap_days"])
        existing = read_flags(con, as_of, gap)
        if memory is not None and memory.flags is not None:
            existing = pl.concat(
                [existing.filter(~pl.col("flag_id").is_in(memory.flags["flag_id"])), memory.flags]
            )
        dispositions = read_dispositions(con, existing.get_column("flag_id").to_list())
        merchants = day.select("terminal_id", "merchant_id").filter(
            pl.col("merchant_id").is_not_null()
        )
        touched = merge_detections(
            existing,
            detections,
            as_of,
            run_id,
            config,
            dispositions=dispositions,
            merchants=merchants,
        )
        flags_table = _flags_as_table(touched)
        at_risk_rows = _at_risk_rows(at_risk, touched, run_id)
        timings["episodes_s"] = time.perf_counter() - t
        mark("episodes")

        if persist:
            t = time.perf_counter()
            _write(con, as_of, day, flags_table, at_risk_rows, run_id)
            timings["write_s"] = time.perf_counter() - t
            mark("write")
        elif memory is not None:
            memory.terminal_day.append(day.select("terminal_id", "local_date", *HISTORY_COLUMNS))
            prev = (
                memory.flags
                if memory.flags is not None
                else pl.DataFrame(schema=FLAG_FRAME_SCHEMA)
            )
            memory.flags = pl.concat(
                [prev.filter(~pl.col("flag_id").is_in(touched["flag_id"])), touched]
            )

        counts: dict[str, Any] = {
            "transactions": n_txns,
            "partitions": parts,
            "terminals": day.height,
            "registry_rows": registry.height,
            "implausible": implausible.height,
            "detections": detections.height,
            "flags": flags_table.height,
            "new_flags": int(touched.filter(pl.col("first_seen") == as_of).height),
            "at_risk_cards": at_risk_rows.height,
            "by_behaviour": dict(
                detections.group_by("behaviour").len().sort("behaviour").iter_rows()
            ),
            **{k: round(v, 3) for k, v in timings.items()},
            **{k: round(v) for k, v in rss.items()},
        }
        duration = time.perf_counter() - t0
        counts["duration_s"] = round(duration, 3)
        if persist:
            inputs = sorted(file_ids)
            _record_run(
                con,
                run_id,
                as_of,
                started,
                status="succeeded",
                finished_at=datetime.now(),
                inputs=json.dumps({"transaction_files": inputs}),
                code_version=code_version(),
                config_version=cfg_version,
                policy_version=pol_version,
                row_counts=json.dumps(counts, default=str),
                duration_s=duration,
            )
        return DetectionResult(as_of, run_id, detections, flags_table, at_risk_rows, counts)
    except Exception as exc:
        if persist:
            _record_run(
                con,
                run_id,
                as_of,
                started,
                status="failed",
                finished_at=datetime.now(),
                code_version=code_version(),
                config_version=cfg_version,
                policy_version=pol_version,
                duration_s=time.perf_counter() - t0,
                message=f"{type(exc).__name__}: {exc}"[:2000],
            )
        raise


def run_detection(
    settings,
    as_of: date,
    *,
    con: duckdb.DuckDBPyConnection | None = None,
    config: dict[str, Any] | None = None,
    policies_override: dict | None = None,
    persist: bool = True,
    run_id: str | None = None,
    task_runner: str = "local",
    dask_address: str | None = None,
    spill_dir: str | Path | None = None,
) -> DetectionResult:
    """Detect behaviours on local day ``as_of`` and (unless ``persist=False``) write flags.

    Parameters
    ----------
    settings : Settings
        Names the database (used when ``con`` is not given).
    as_of : date
        The local day to detect on.
    con : DuckDB connection or None
        An open connection to use (not closed here).
    config : dict or None
        Thresholds (:func:`models.config.load_config`); ``None`` loads the defaults.
    policies_override : dict or None
        policy_id -> body replacing the stored versions (backtests).
    persist : bool
        ``False`` writes nothing at all: no flags, no aggregates, no ``runs`` row.
    run_id : str or None
        Id recorded with the run and written into touched flags.
    task_runner : {"local", "dask"}
        Where the per-terminal partitions run: worker processes of this machine, or
        a Dask cluster through prefect-dask (:mod:`pipelines.detect.cluster`).
    dask_address : str or None
        Scheduler of the Dask cluster (default ``$TRIALGUARD_DASK_ADDRESS``; none
        starts a LocalCluster sized to the machine).
    spill_dir : path or None
        Where the day's partitions are spilled (default beside the store); with a
        real cluster, a path every worker can read.

    Returns
    -------
    DetectionResult
    """
    return run_range(
        settings,
        as_of,
        as_of,
        con=con,
        config=config,
        policies_override=policies_override,
        persist=persist,
        run_id=run_id,
        task_runner=task_runner,
        dask_address=dask_address,
        spill_dir=spill_dir,
    )[0]


def run_range(
    settings,
    start: date,
    end: date,
    *,
    con: duckdb.DuckDBPyConnection | None = None,
    config: dict[str, Any] | None = None,
    policies_override: dict | None = None,
    persist: bool = True,
    run_id: str | None = None,
    progress=None,
    task_runner: str = "local",
    dask_address: str | None = None,
    spill_dir: str | Path | None = None,
) -> list[DetectionResult]:
    """:func:`run_detection` for every day from ``start`` to ``end`` (inclusive), in date order.

    With ``persist=False`` the days see each other's aggregates and flags in
    memory, exactly as if they had been written. ``progress`` (optional) is
    called with each :class:`DetectionResult`. ``task_runner``, ``dask_address``
    and ``spill_dir`` as in :func:`run_detection`; a Dask cluster is connected to
    (or started) once for the whole range.
    """
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}; give the earlier date first")
    from pipelines.storage import connect

    config = load_config() if config is None else config
    from pipelines.detect.cluster import check_task_runner
    from pipelines.detect.cluster import dask_address as resolve_address

    task_runner = check_task_runner(task_runner)
    address = resolve_address(dask_address)
    spill_dir = spill_dir or os.environ.get("TRIALGUARD_SPILL_DIR") or None
    own = con is None
    if own:
        con = connect(settings.db_path, read_only=not persist)
    memory = None if persist else _Memory()
    results = []
    stack = contextlib.ExitStack()
    previous_limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    try:
        # DuckDB keeps the blocks it scanned cached up to its limit (80% of RAM by
        # default): a 10 M-row day alone grew it by ~2 GiB (issue 4). Beyond the
        # run's limit it evicts them, or spills work to its temp directory.
        con.execute(f"SET memory_limit = '{run_memory_limit()}'")
        n = (end - start).days + 1
        cluster = None
        if task_runner == "dask":
            from pipelines.detect.cluster import dask_cluster

            cluster = stack.enter_context(dask_cluster(address))
        for i in range(n):
            day = start + timedelta(days=i)
            rid = None if run_id is None else (run_id if n == 1 else f"{run_id}-{day.isoformat()}")
            res = _run_one(
                settings,
                day,
                con=con,
                config=config,
                policies_override=policies_override,
                persist=persist,
                run_id=rid,
                memory=memory,
                cluster=cluster,
                spill_dir=spill_dir,
            )
            results.append(res)
            if progress is not None:
                progress(res)
    finally:
        stack.close()
        if own:
            con.close()
        else:
            con.execute(f"SET memory_limit = '{previous_limit}'")
    return results


def run_memory_limit() -> str:
    """DuckDB ``memory_limit`` during ``trialguard run``: ``TRIALGUARD_RUN_MEMORY_LIMIT`` or 1GB."""
    text = os.environ.get("TRIALGUARD_RUN_MEMORY_LIMIT", "").strip() or "1GB"
    if not text[:1].isdigit() or "'" in text:
        raise ValueError(
            f"TRIALGUARD_RUN_MEMORY_LIMIT={text!r} is not a size; give e.g. 1GB or 1536MB"
        )
    return text


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date; expected YYYY-MM-DD, e.g. 2026-03-10"
        ) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard run``."""
    parser.add_argument("--date", type=_date, help="the local day to detect on (YYYY-MM-DD)")
    parser.add_argument("--from", dest="date_from", type=_date, help="first day of a range")
    parser.add_argument("--to", dest="date_to", type=_date, help="last day of a range (inclusive)")
    parser.add_argument(
        "--config",
        default=None,
        help="TOML file overriding models/thresholds.toml key by key (a candidate config)",
    )
    from pipelines.detect.cluster import add_runner_arguments

    add_runner_arguments(parser)


def main(args: argparse.Namespace, settings) -> int:
    """``trialguard run --date D | --from D1 --to D2 [--config FILE]``."""
    if args.date and (args.date_from or args.date_to):
        print("error: give either --date or --from/--to, not both", file=sys.stderr)
        return 2
    if args.date:
        start = end = args.date
    elif args.date_from and args.date_to:
        start, end = args.date_from, args.date_to
    else:
        print("error: give --date YYYY-MM-DD, or --from D1 --to D2", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from pipelines.progress import print_summary, steps
    from pipelines.runlock import run_lock

    total: dict[str, Any] = {
        "days": 0,
        "transactions": 0,
        "detections": 0,
        "flags touched": 0,
        "new flags": 0,
        "at-risk cards": 0,
    }
    by_behaviour: dict[str, int] = {}
    with run_lock(settings, "run"), steps("run", total=(end - start).days + 1) as bar:

        def progress(res: DetectionResult) -> None:
            c = res.counts
            total["days"] += 1
            total["transactions"] += c["transactions"]
            total["detections"] += c["detections"]
            total["flags touched"] += c["flags"]
            total["new flags"] += c["new_flags"]
            total["at-risk cards"] += c["at_risk_cards"]
            for b, n in c["by_behaviour"].items():
                by_behaviour[b] = by_behaviour.get(b, 0) + n
            bar.advance(
                f"{res.as_of}: {c['transactions']} transactions, {c['detections']} detections, "
                f"{c['flags']} flags ({c['duration_s']:.1f} s)"
            )

        try:
            run_range(
                settings,
                start,
                end,
                config=config,
                progress=progress,
                task_runner=args.task_runner,
                dask_address=args.dask_address,
                spill_dir=args.spill_dir,
            )
        except (ValueError, RuntimeError) as exc:
            if "Dask" not in str(exc) and "task runner" not in str(exc):
                raise
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print_summary("run", {**total, **{f"  {b}": n for b, n in sorted(by_behaviour.items())}})
    return 0
