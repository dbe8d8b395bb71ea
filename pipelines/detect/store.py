"""Readers of the stored day: what one run date reads from DuckDB.

Transactions of the day (with the originals refunds point at, whole or one
terminal partition), the registry rows known by the end of the day, telemetry
signals, clock-skewed rows, the 30-day ``terminal_day`` history, the flags an
episode could extend, analyst dispositions and the policies in force.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timedelta
from typing import Any

import duckdb
import polars as pl

from features.events import NETWORK_EVENT_TYPES, event_day_features, network_baseline
from features.schema import REASON_STRUCT
from models.episodes import FLAG_FRAME_SCHEMA
from pipelines.detect.partition import HISTORY_COLUMNS

HISTORY_DAYS = 30
#: Lines either side of an implausibly-timed row searched for a neighbour of the run date.
NEIGHBOUR_LINES = 20


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
