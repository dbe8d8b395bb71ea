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
import hashlib
import json
import logging
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
from pyarrow import ipc

from features.events import (
    NETWORK_EVENT_TYPES,
    event_day_features,
    network_baseline,
)
from features.peers import with_peer_features
from features.policy import policy_frame
from features.schema import (
    AT_RISK_CARDS_COLUMNS,
    DETECTION_SCHEMA,
    FLAGS_COLUMNS,
    REASON_STRUCT,
    TERMINAL_DAY_COLUMNS,
)
from models.anomaly import anomaly_detections, anomaly_view
from models.config import config_version, load_config
from models.episodes import FLAG_FRAME_SCHEMA, merge_detections
from pipelines.detect.partition import (  # noqa: F401  (re-exported: the per-terminal step's API)
    HISTORY_COLUMNS,
    _detect_frame,
    _detect_spilled,
    _with_implausible,
    detect_partition,
    load_spilled,
    with_history,
)
from pipelines.version import code_version

log = logging.getLogger(__name__)

HISTORY_DAYS = 30
#: Lines either side of an implausibly-timed row searched for a neighbour of the run date.
NEIGHBOUR_LINES = 20
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


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _exec(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> None:
    """Run a statement and finish its result (DuckDB 2 refuses new work while one is open)."""
    con.execute(sql, params or []).fetchall()


def _frame(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> pl.DataFrame:
    """Run ``sql`` and return a polars frame."""
    rel = con.sql(sql, params=params) if params else con.sql(sql)
    return pl.from_arrow(rel.to_arrow_table())


def load_policies(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    """The latest loaded version of every policy: policy_id -> body."""
    rows = con.execute(
        "SELECT policy_id, CAST(body AS VARCHAR) FROM policies "
        "QUALIFY row_number() OVER (PARTITION BY policy_id ORDER BY loaded_at DESC, version) = 1"
    ).fetchall()
    return {pid: json.loads(body) for pid, body in rows}


def policy_version(policies: dict[str, dict[str, Any]]) -> str:
    """sha256 of the policies in force (canonical JSON)."""
    text = json.dumps(policies, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_day_transactions(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    lookback_days: int = 90,
    partition: tuple[int, int] | None = None,
) -> pl.DataFrame:
    """Transactions of local day ``as_of`` with the original a refund refers to.

    The columns :func:`detect_partition` reads (see :func:`_day_sql`). Originals
    are looked up among the ``lookback_days`` days before ``as_of``
    only, so the lookup does not scan the whole history. ``partition=(i, n)``
    reads only the terminals of partition ``i`` of ``n`` (by a hash of
    ``terminal_id``): every row of a terminal is in the same partition.
    """
    part = ""
    if partition is not None:
        i, n = (int(x) for x in partition)
        if not 0 <= i < n:
            raise ValueError(
                f"partition {partition!r} is not (index, count) with 0 <= index < count; "
                "give e.g. (0, 4)"
            )
        part = f" AND {_partition_sql(n)} = {i}"
    return _frame(con, _day_sql(part), [as_of, as_of - timedelta(days=lookback_days), as_of])


def _partition_sql(parts: int) -> str:
    """SQL of a transaction's terminal partition (0 .. ``parts - 1``), a hash of ``terminal_id``."""
    return f"hash(terminal_id) % {int(parts)}"


#: Stored transaction columns the per-terminal step does not read (:func:`detect_partition`
#: needs neither them nor ``original_txn_id``, which only serves the refund lookup): left
#: out of the day's rows so they are not converted, spilled, reloaded and sorted (issue 4).
UNREAD_DAY_COLUMNS: tuple[str, ...] = (
    "extra",
    "currency",
    "card_country",
    "pin_entered",
    "rrn",
    "line_no",
)


def _day_sql(where: str = "") -> str:
    """The day's transactions with the refund lookup; params: day, lookback start, day.

    Every stored column but :data:`UNREAD_DAY_COLUMNS` and ``original_txn_id``, plus
    ``orig_terminal_id``, ``orig_card_token`` and ``orig_amount_minor`` of the original
    a refund refers to.
    """
    unread = ", ".join(UNREAD_DAY_COLUMNS)
    return f"""
        WITH day AS NOT MATERIALIZED (
            SELECT * EXCLUDE ({unread}) FROM transactions WHERE local_date = ?{where}
        ),
        orig AS (
            SELECT txn_id, terminal_id, card_token, amount_minor FROM transactions
            WHERE local_date BETWEEN ? AND ?
              AND txn_id IN (SELECT original_txn_id FROM day WHERE original_txn_id IS NOT NULL)
        )
        SELECT day.* EXCLUDE (original_txn_id),
               orig.terminal_id AS orig_terminal_id,
               orig.card_token AS orig_card_token,
               orig.amount_minor AS orig_amount_minor
        FROM day LEFT JOIN orig ON orig.txn_id = day.original_txn_id
        """


def spill_day_transactions(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    folder: Path,
    parts: int,
    lookback_days: int = 90,
    batch_rows: int = 500_000,
) -> list[Path]:
    """Write the day's transactions (as :func:`read_day_transactions`) split in terminal partitions.

    One scan of the day, streamed in Arrow batches of ``batch_rows`` rows. DuckDB
    adds each row's partition (:func:`_partition_sql`, as ``read_day_transactions``
    with ``partition``); each batch is put in partition order by one stable gather
    and its slices appended to one Arrow IPC file (lz4) per partition, in a
    sub-folder per partition. The rows stay Arrow from the database to the file:
    no conversion to polars and back, one file to open per partition. So a big day
    is read once, memory holds one batch at a time, and each partition can then be
    loaded on its own (:func:`load_spilled`), by this process or a worker. Every row
    of a terminal is in the same partition, in the order of the read. Returns the
    ``parts`` folders (the folder of an empty partition has no file). The caller
    removes ``folder``.
    """
    parts = int(parts)
    if parts < 1:
        raise ValueError(f"parts={parts!r}: expected a count of partitions >= 1, e.g. 4")
    folders = [Path(folder) / f"part-{i:04d}" for i in range(parts)]
    for f in folders:
        f.mkdir(parents=True, exist_ok=True)
    sql = f"SELECT *, ({_partition_sql(parts)})::INTEGER AS _tg_part FROM ({_day_sql()})"
    reader = con.sql(sql, params=[as_of, as_of - timedelta(days=lookback_days), as_of])
    reader = reader.to_arrow_reader(int(batch_rows))
    at = reader.schema.get_field_index("_tg_part")
    schema = reader.schema.remove(at)
    options = ipc.IpcWriteOptions(compression="lz4")
    writers: list[ipc.RecordBatchFileWriter | None] = [None] * parts
    try:
        for batch in reader:
            if batch.num_rows == 0:
                continue
            part = batch.column("_tg_part").to_numpy()
            counts = np.bincount(part, minlength=parts)
            rows = pa.RecordBatch.from_arrays(
                [c for k, c in enumerate(batch.columns) if k != at], schema=schema
            ).take(pa.array(np.argsort(part, kind="stable")))
            start = 0
            for i in np.flatnonzero(counts):
                if writers[i] is None:
                    writers[i] = ipc.new_file(
                        str(folders[i] / "rows.arrow"), schema, options=options
                    )
                writers[i].write_batch(rows.slice(start, int(counts[i])))
                start += int(counts[i])
            del batch, rows
    finally:
        for w in writers:
            if w is not None:
                w.close()
    return folders


def read_telemetry(
    con: duckdb.DuckDBPyConnection, as_of: date, registry: pl.DataFrame, config: dict[str, Any]
) -> pl.DataFrame:
    """Per-terminal telemetry signals of day ``as_of`` (:func:`features.events.event_day_features`).

    Reads the day's ``terminal_events`` and, for the network baseline, the network
    columns of the ``[relocation] network_baseline_days`` days before.
    """
    cols = "event_id, terminal_id, event_time, event_type, device_serial, lat, lon, cell_id, "
    cols += "ip_address"
    start = datetime.combine(as_of, datetime.min.time())
    events = _frame(
        con,
        f"SELECT {cols} FROM terminal_events WHERE event_time >= ? AND event_time < ?",
        [start, start + timedelta(days=1)],
    )
    if events.height == 0:
        return events
    types = ", ".join(f"'{t}'" for t in NETWORK_EVENT_TYPES)
    days = int(config["relocation"]["network_baseline_days"])
    past = _frame(
        con,
        "SELECT terminal_id, CAST(event_time AS DATE) AS event_date, cell_id, ip_address, "
        "count(*) AS n FROM terminal_events "
        f"WHERE event_time >= ? AND event_time < ? AND event_type IN ({types}) GROUP BY ALL",
        [start - timedelta(days=days), start],
    )
    baseline = network_baseline(past.lazy()) if past.height else None
    return event_day_features(events.lazy(), registry.lazy(), baseline).collect()


def read_registry(con: duckdb.DuckDBPyConnection, as_of: date) -> pl.DataFrame:
    """Registry rows known by the end of ``as_of`` (every version)."""
    end = datetime.combine(as_of + timedelta(days=1), datetime.min.time())
    return _frame(con, "SELECT * EXCLUDE (extra) FROM terminals WHERE updated_at < ?", [end])


def read_implausible(
    con: duckdb.DuckDBPyConnection, as_of: date, config: dict[str, Any]
) -> pl.DataFrame:
    """Rows with an implausible time (clock skew) that were sent on ``as_of``.

    A row of a file that carries ``as_of`` transactions is implausible when its
    local day is more than ``clock_skew_days`` away from ``as_of`` while a
    neighbouring line of the same file (within :data:`NEIGHBOUR_LINES` lines) is
    dated ``as_of``: it was sent that day with a wrong clock. Only the files of
    the day are read, so the cost follows the day's volume, not the history.
    ``outside_trial`` says whether its date is outside the terminal's trial window.
    """
    skew = int(config["malfunction"]["clock_skew_days"])
    return (
        _frame(
            con,
            f"""
        WITH files AS (SELECT DISTINCT file_id FROM transactions WHERE local_date = ?),
        odd AS (
            SELECT t.txn_id, t.terminal_id, t.file_id, t.line_no, t.txn_time, t.local_date
            FROM transactions t JOIN files USING (file_id)
            WHERE t.local_date < ? OR t.local_date > ?
        ),
        probe AS (
            SELECT odd.*, odd.line_no + k AS near_line
            FROM odd, range(-{NEIGHBOUR_LINES}, {NEIGHBOUR_LINES + 1}) r(k)
            WHERE k <> 0
        ),
        hit AS (
            SELECT DISTINCT p.terminal_id, p.txn_id, p.txn_time, p.local_date
            FROM probe p JOIN transactions t
              ON t.file_id = p.file_id AND t.line_no = p.near_line
            WHERE t.local_date = ?
        ),
        reg AS (
            SELECT terminal_id, arg_max(trial_start, updated_at) AS trial_start,
                   arg_max(trial_end, updated_at) AS trial_end
            FROM terminals GROUP BY terminal_id
        )
        SELECT hit.terminal_id, hit.txn_id,
               coalesce(hit.local_date < reg.trial_start OR hit.local_date > reg.trial_end,
                        true) AS outside_trial
        FROM hit LEFT JOIN reg USING (terminal_id)
        ORDER BY hit.terminal_id, hit.txn_time, hit.txn_id
        """,
            [as_of, as_of - timedelta(days=skew), as_of + timedelta(days=skew), as_of],
        )
        if skew >= 0
        else pl.DataFrame(
            schema={"terminal_id": pl.String, "txn_id": pl.String, "outside_trial": pl.Boolean}
        )
    )


def read_history(
    con: duckdb.DuckDBPyConnection, as_of: date, days: int = HISTORY_DAYS
) -> pl.DataFrame:
    """``terminal_day`` rows of the ``days`` days before ``as_of`` (history features)."""
    return _frame(
        con,
        f"SELECT terminal_id, local_date, {', '.join(HISTORY_COLUMNS)} FROM terminal_day "
        "WHERE local_date >= ? AND local_date < ?",
        [as_of - timedelta(days=days), as_of],
    )


def _json_lists(df: pl.DataFrame) -> pl.DataFrame:
    """Flags as read from the table -> ``reasons`` / ``evidence`` as lists."""
    reasons = [json.loads(r) if r else [] for r in df.get_column("reasons").to_list()]
    evidence = [json.loads(e) if e else [] for e in df.get_column("evidence").to_list()]
    return (
        df.with_columns(
            pl.Series("reasons", reasons, dtype=pl.List(REASON_STRUCT)),
            pl.Series("evidence", evidence, dtype=pl.List(pl.String)),
        )
        .select(FLAG_FRAME_SCHEMA.names())
        .cast(dict(FLAG_FRAME_SCHEMA))
    )


def read_flags(con: duckdb.DuckDBPyConnection, as_of: date, gap_days: int) -> pl.DataFrame:
    """Flags an episode on ``as_of`` could extend (within ``gap_days``)."""
    df = _frame(
        con,
        "SELECT flag_id, terminal_id, merchant_id, behaviour, category, score, severity, "
        "first_seen, last_seen, CAST(reasons AS VARCHAR) AS reasons, "
        "CAST(evidence AS VARCHAR) AS evidence, status, run_id FROM flags "
        "WHERE last_seen >= ? AND first_seen <= ?",
        [as_of - timedelta(days=gap_days), as_of + timedelta(days=gap_days)],
    )
    if df.height == 0:
        return pl.DataFrame(schema=FLAG_FRAME_SCHEMA)
    return _json_lists(df)


def read_dispositions(con: duckdb.DuckDBPyConnection, flag_ids: list[str]) -> pl.DataFrame:
    """Analyst decisions on the given flags."""
    if not flag_ids:
        return pl.DataFrame(
            schema={
                "flag_id": pl.String,
                "decision": pl.String,
                "decided_at": pl.Datetime("us"),
                "snooze_until": pl.Date,
            }
        )
    ids = pl.DataFrame({"flag_id": flag_ids})
    con.register("_tg_flag_ids", ids.to_arrow())
    try:
        return _frame(
            con,
            "SELECT d.flag_id, d.decision, d.decided_at, d.snooze_until FROM dispositions d "
            "JOIN _tg_flag_ids USING (flag_id)",
        )
    finally:
        con.unregister("_tg_flag_ids")


# ---------------------------------------------------------------------------
# Pure steps
# ---------------------------------------------------------------------------


def _flags_as_table(flags: pl.DataFrame) -> pl.DataFrame:
    """Flag frame (lists) -> the columns of the ``flags`` table (JSON text)."""
    reasons = [json.dumps(r, ensure_ascii=False) for r in flags.get_column("reasons").to_list()]
    evidence = [json.dumps(e) for e in flags.get_column("evidence").to_list()]
    return flags.with_columns(
        pl.Series("reasons", reasons, dtype=pl.String),
        pl.Series("evidence", evidence, dtype=pl.String),
    ).select([c.name for c in FLAGS_COLUMNS])


def _at_risk_rows(at_risk: pl.DataFrame, flags: pl.DataFrame, run_id: str) -> pl.DataFrame:
    """At-risk cards with the flag_id of their terminal's card_compromise flag."""
    names = [c.name for c in AT_RISK_CARDS_COLUMNS]
    if at_risk is None or at_risk.height == 0:
        return pl.DataFrame(schema={n: pl.String for n in names}).cast(
            {"first_seen": pl.Datetime("us"), "last_seen": pl.Datetime("us")}
        )
    cc = flags.filter(pl.col("behaviour") == "card_compromise").select("terminal_id", "flag_id")
    return (
        at_risk.join(cc, on="terminal_id", how="inner")
        .with_columns(pl.lit(run_id).alias("run_id"))
        .select(names)
    )


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _insert(con: duckdb.DuckDBPyConnection, table: str, df: pl.DataFrame) -> None:
    if df.height == 0:
        return
    con.register("_tg_insert", df.to_arrow())
    try:
        cols = ", ".join(df.columns)
        _exec(con, f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _tg_insert")
    finally:
        con.unregister("_tg_insert")


def _write(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    day: pl.DataFrame,
    flags_table: pl.DataFrame,
    at_risk_rows: pl.DataFrame,
    run_id: str,
) -> None:
    """Upsert the day's terminal_day rows and the touched flags; replace their at-risk cards."""
    td_cols = [c.name for c in TERMINAL_DAY_COLUMNS]
    td = day.with_columns(pl.lit(run_id).alias("run_id")).select(td_cols)
    _exec(con, "BEGIN TRANSACTION")
    try:
        _exec(con, "DELETE FROM terminal_day WHERE local_date = ?", [as_of])
        _insert(con, "terminal_day", td)
        if flags_table.height:
            ids = flags_table.select("flag_id")
            con.register("_tg_ids", ids.to_arrow())
            _exec(con, "DELETE FROM flags WHERE flag_id IN (SELECT flag_id FROM _tg_ids)")
            con.unregister("_tg_ids")
            _insert(con, "flags", flags_table)
        if at_risk_rows.height:
            ids = at_risk_rows.select("flag_id").unique()
            con.register("_tg_ids", ids.to_arrow())
            _exec(con, "DELETE FROM at_risk_cards WHERE flag_id IN (SELECT flag_id FROM _tg_ids)")
            con.unregister("_tg_ids")
            _insert(con, "at_risk_cards", at_risk_rows)
        _exec(con, "COMMIT")
    except Exception:
        _exec(con, "ROLLBACK")
        raise


def _record_run(
    con: duckdb.DuckDBPyConnection, run_id: str, as_of: date, started: datetime, **values: Any
) -> None:
    """Insert or update the ``runs`` row of this run."""
    _exec(con, "DELETE FROM runs WHERE run_id = ?", [run_id])
    cols = ["run_id", "command", "as_of", "started_at", *values]
    params = [run_id, "run", as_of, started, *values.values()]
    _exec(
        con,
        f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
        params,
    )


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


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


def _only(df: pl.DataFrame | None, terminals: pl.Series) -> pl.DataFrame | None:
    """Rows of ``df`` about the given terminals (``None`` / frames without terminal_id kept)."""
    if df is None or "terminal_id" not in df.columns:
        return df
    return df.filter(pl.col("terminal_id").is_in(terminals))


def _spill_dir(settings) -> str | None:
    """Folder for the spilled partitions: beside the store (same protection), else the temp dir."""
    db = getattr(settings, "db_path", None)
    if db is None or str(db) == ":memory:":
        return None
    parent = Path(db).resolve().parent
    return str(parent) if parent.is_dir() else None


def _detect_partitioned(
    con: duckdb.DuckDBPyConnection,
    settings,
    as_of: date,
    parts: int,
    lookback: int,
    inputs: tuple,
    timings: dict[str, float],
) -> tuple[pl.DataFrame, pl.DataFrame, int, set[str]]:
    """The per-terminal step of a big day: one read, ``parts`` partitions, worker processes."""
    registry, pol, config, implausible, history, telemetry = inputs
    with tempfile.TemporaryDirectory(prefix=".tg-run-", dir=_spill_dir(settings)) as tmp:
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
        if workers > 1:
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
        if parts == 1:
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
) -> list[DetectionResult]:
    """:func:`run_detection` for every day from ``start`` to ``end`` (inclusive), in date order.

    With ``persist=False`` the days see each other's aggregates and flags in
    memory, exactly as if they had been written. ``progress`` (optional) is
    called with each :class:`DetectionResult`.
    """
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}; give the earlier date first")
    from pipelines.storage import connect

    config = load_config() if config is None else config
    own = con is None
    if own:
        con = connect(settings.db_path, read_only=not persist)
    memory = None if persist else _Memory()
    results = []
    previous_limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    try:
        # DuckDB keeps the blocks it scanned cached up to its limit (80% of RAM by
        # default): a 10 M-row day alone grew it by ~2 GiB (issue 4). Beyond the
        # run's limit it evicts them, or spills work to its temp directory.
        con.execute(f"SET memory_limit = '{run_memory_limit()}'")
        n = (end - start).days + 1
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
            )
            results.append(res)
            if progress is not None:
                progress(res)
    finally:
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

        run_range(settings, start, end, config=config, progress=progress)
    print_summary("run", {**total, **{f"  {b}": n for b, n in sorted(by_behaviour.items())}})
    return 0
