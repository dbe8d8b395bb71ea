"""Cross-terminal and report-driven detectors: the DuckDB side.

``run_leakage_detectors(con, as_of, config)`` reads what the three detectors of
``models.compromise`` (``card_compromise``), ``models.hotspot`` (``fraud_hotspot``)
and ``models.exposure`` (``pan_exposure``) need for one run date, in SQL that keeps
the data small:

- fraud reports known at the end of ``as_of`` (``reported_at`` before the next day);
- transactions of the reported cards only (to match reports and find exposure);
- per-terminal aggregates (distinct cards, sales count and amount) computed in DuckDB,
  from the incremental day tables ``card_days``, ``card_visit_days`` and
  ``terminal_day_sales`` (see :func:`refresh_day_tables`) when the connection is writable,
  else (read-only backtests) from raw ``transactions``; both give the same numbers;
- for ``card_compromise``, distinct cards per day by the day of their previous visit
  (``card_visit_days``, or the same from raw ``transactions``) at the terminals the
  reported cards visited and network-wide, from which the model counts the distinct
  cards of any sub-window (each terminal is judged over its compromise period);
- free texts of the day that contain the redaction marker.

``pipelines.detect.run`` merges the detections into flag episodes and writes the
at-risk cards with the ``flag_id`` of the ``card_compromise`` flag.
"""

from __future__ import annotations

import tomllib
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import polars as pl

from features.schema import (
    CARD_VISIT_HORIZON_DAYS,
    DETECTION_SCHEMA,
    PAN_REDACTION_MARKER,
    TABLES,
    ddl,
)
from models.compromise import at_risk_cards, score_card_compromise
from models.compromise.params import AT_RISK_SCHEMA, NETWORK, VISIT_DAYS_SCHEMA, CompromiseParams
from models.exposure import TEXTS_SCHEMA, ExposureParams, score_pan_exposure
from models.hotspot import SALE_TYPES, HotspotParams, score_fraud_hotspot

THRESHOLDS_FILE = Path(__file__).resolve().parents[2] / "models" / "thresholds.toml"


class LeakageResult(NamedTuple):
    """Everything one run date produced (``stats`` frames are for tuning and reports)."""

    detections: pl.DataFrame
    at_risk: pl.DataFrame
    compromise_stats: pl.DataFrame
    hotspot_stats: pl.DataFrame


def _frame(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | dict[str, Any] | None = None
) -> pl.DataFrame:
    """Run ``sql`` and return the result as a polars frame."""
    return pl.from_arrow(con.sql(sql, params=params or None).to_arrow_table())


def _config(config: dict[str, Any] | None) -> dict[str, Any]:
    """The thresholds config: as given, else ``models/thresholds.toml``."""
    if config is not None:
        return config
    try:
        from models.config import load_config
    except ImportError:  # the loader is not there: read the file ourselves
        if not THRESHOLDS_FILE.exists():
            return {}
        with THRESHOLDS_FILE.open("rb") as fh:
            return tomllib.load(fh)
    return load_config()


def _end(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time())


def read_known_reports(con: duckdb.DuckDBPyConnection, as_of: date, since: date) -> pl.DataFrame:
    """Fraud reports known at the end of ``as_of`` whose fraud happened on or after ``since``."""
    return _frame(
        con,
        """
        SELECT report_id, card_token, txn_id, fraud_time, reported_at
        FROM fraud_reports
        WHERE reported_at < ? AND fraud_time >= ? AND card_token IS NOT NULL
        """,
        [_end(as_of), datetime.combine(since, time())],
    )


def read_reported_card_txns(
    con: duckdb.DuckDBPyConnection, as_of: date, since: date, start: date
) -> pl.DataFrame:
    """Transactions from ``start`` to ``as_of`` of the cards in the known reports."""
    return _frame(
        con,
        """
        SELECT t.txn_id, t.terminal_id, t.card_token, t.card_bin, t.card_last4,
               t.txn_time, t.txn_type, t.amount_minor
        FROM transactions t
        WHERE t.local_date BETWEEN ? AND ?
          AND t.card_token IN (
              SELECT card_token FROM fraud_reports
              WHERE reported_at < ? AND fraud_time >= ? AND card_token IS NOT NULL)
        """,
        [start, as_of, _end(as_of), datetime.combine(since, time())],
    )


def read_terminal_cards(
    con: duckdb.DuckDBPyConnection, start: date, end: date
) -> tuple[pl.DataFrame, int]:
    """``n_t`` (distinct cards per terminal) and all distinct cards over ``[start, end]``."""
    per_terminal = _frame(
        con,
        """
        SELECT terminal_id, count(DISTINCT card_token)::BIGINT AS n_cards
        FROM transactions WHERE local_date BETWEEN ? AND ? GROUP BY terminal_id
        """,
        [start, end],
    )
    n_active = _frame(
        con,
        "SELECT count(DISTINCT card_token) AS n FROM transactions WHERE local_date BETWEEN ? AND ?",
        [start, end],
    ).item()
    return per_terminal, int(n_active or 0)


def _with_terminals(
    con: duckdb.DuckDBPyConnection, terminals: pl.Series, sql: str, params: dict[str, Any]
) -> pl.DataFrame:
    """Run ``sql`` with the terminal ids ``terminals`` registered as ``_tg_cpp_terminals``."""
    con.register("_tg_cpp_terminals", pl.DataFrame({"terminal_id": terminals}).to_arrow())
    try:
        frame = _frame(con, sql, params)
    finally:
        con.unregister("_tg_cpp_terminals")
    return frame.cast(dict(VISIT_DAYS_SCHEMA)).select(VISIT_DAYS_SCHEMA.names())


def read_visit_days(
    con: duckdb.DuckDBPyConnection, start: date, end: date, terminals: pl.Series
) -> pl.DataFrame:
    """``VISIT_DAYS_SCHEMA`` rows over ``[start, end]`` of ``terminals`` and the network.

    Distinct cards per terminal and day by the day of their previous visit there inside
    the window (null when none), from raw ``transactions``; ``models.compromise`` counts
    the distinct cards of any sub-window from them.
    """
    return _with_terminals(
        con,
        terminals,
        f"""
        WITH days AS (
            SELECT DISTINCT terminal_id, card_token, local_date FROM transactions
            WHERE local_date BETWEEN $s AND $e AND card_token IS NOT NULL
        ),
        mine AS (SELECT * FROM days SEMI JOIN _tg_cpp_terminals USING (terminal_id)),
        network AS (SELECT DISTINCT card_token, local_date FROM days)
        SELECT terminal_id, local_date, prev_date, count(*) AS n_cards
        FROM (SELECT terminal_id, local_date, lag(local_date) OVER (
                  PARTITION BY terminal_id, card_token ORDER BY local_date) AS prev_date
              FROM mine)
        GROUP BY ALL
        UNION ALL
        SELECT '{NETWORK}', local_date, prev_date, count(*)
        FROM (SELECT local_date, lag(local_date) OVER (
                  PARTITION BY card_token ORDER BY local_date) AS prev_date
              FROM network)
        GROUP BY ALL
        """,
        {"s": start, "e": end},
    )


def read_visit_days_cached(
    con: duckdb.DuckDBPyConnection, start: date, end: date, terminals: pl.Series
) -> pl.DataFrame:
    """:func:`read_visit_days` from ``card_visit_days`` (refreshed beforehand).

    A previous visit before ``start`` is reported as null, as in the raw-data path.
    """
    return _with_terminals(
        con,
        terminals,
        f"""
        SELECT terminal_id, local_date,
               CASE WHEN prev_date >= $s THEN prev_date END AS prev_date,
               sum(n_cards) AS n_cards
        FROM card_visit_days
        WHERE local_date BETWEEN $s AND $e
          AND (terminal_id = '{NETWORK}'
               OR terminal_id IN (SELECT terminal_id FROM _tg_cpp_terminals))
        GROUP BY ALL
        """,
        {"s": start, "e": end},
    )


def read_terminal_sales(con: duckdb.DuckDBPyConnection, start: date, end: date) -> pl.DataFrame:
    """Sales count and amount per terminal over ``[start, end]`` (see ``models.hotspot``)."""
    types = ", ".join(f"'{t}'" for t in SALE_TYPES)
    return _frame(
        con,
        f"""
        SELECT terminal_id, count(*)::BIGINT AS n_sales,
               coalesce(sum(amount_minor), 0)::BIGINT AS sales_amount
        FROM transactions
        WHERE local_date BETWEEN ? AND ? AND txn_type IN ({types})
        GROUP BY terminal_id
        """,
        [start, end],
    )


# ---------------------------------------------------------------------------
# Incremental day tables: ``card_visit_days`` and ``terminal_day_sales``
# ---------------------------------------------------------------------------

#: 63-bit key of a (terminal, card) pair. DuckDB's ``hash`` may change between versions:
#: a probe row (terminal ``'#probe'``, day 1970-01-01) records it, and the day tables are
#: rebuilt when it no longer matches.
_PAIR_KEY = "(hash(terminal_id, card_token) >> 1)::BIGINT"
_ANY_PAIR_KEY = "(hash('*', card_token) >> 1)::BIGINT"  # _PAIR_KEY of terminal '*'
_PROBE = "'#probe'"
_CACHE_TABLES = ("card_visit_days", "terminal_day_sales", "card_days")


def _writable_cache(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con`` can keep the day tables (writable database); creates them if needed."""
    rows = con.execute(
        "SELECT readonly FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchall()
    if not rows or rows[0][0]:
        return False
    for table in _CACHE_TABLES:  # derived data: a table of an older layout is rebuilt
        have = con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = 'main' AND table_name = ? ORDER BY column_index",
            [table],
        ).fetchall()
        if [r[0] for r in have] != [c.name for c in TABLES[table][0]]:
            con.execute(f"DROP TABLE IF EXISTS {table}").fetchall()
            con.execute(ddl(table)).fetchall()
    probe = f"SELECT {_PAIR_KEY} FROM (SELECT {_PROBE} AS terminal_id, 'probe' AS card_token)"
    expected = con.execute(probe).fetchall()
    stored = con.execute(f"SELECT pair_key FROM card_days WHERE terminal_id = {_PROBE}").fetchall()
    if stored != expected:  # new tables, or keys of another hash function: start again
        for table in _CACHE_TABLES:
            con.execute(f"DELETE FROM {table}").fetchall()
        con.execute(
            f"INSERT INTO card_days SELECT {_PROBE}, DATE '1970-01-01', ({probe})"
        ).fetchall()
    return True


def _stale_days(con: duckdb.DuckDBPyConnection, start: date, end: date) -> list[date]:
    """Days in ``[start, end]`` whose stored transaction count differs from ``transactions``."""
    rows = con.execute(
        """
        SELECT coalesce(a.local_date, s.local_date) AS d
        FROM (SELECT local_date, count(*) AS n FROM transactions
              WHERE local_date BETWEEN ? AND ? GROUP BY local_date) a
        FULL OUTER JOIN (SELECT local_date, sum(n_txn) AS n FROM terminal_day_sales
              WHERE local_date BETWEEN ? AND ? GROUP BY local_date) s USING (local_date)
        WHERE a.n IS DISTINCT FROM s.n
        ORDER BY d
        """,
        [start, end, start, end],
    ).fetchall()
    return [r[0] for r in rows]


def _refresh_day(con: duckdb.DuckDBPyConnection, day: date) -> None:
    """Recompute the day tables' rows of ``day`` from ``transactions``."""
    types = ", ".join(f"'{t}'" for t in SALE_TYPES)
    for table in _CACHE_TABLES:
        con.execute(f"DELETE FROM {table} WHERE local_date = ?", [day]).fetchall()
    con.execute(
        f"""
        INSERT INTO terminal_day_sales
        SELECT terminal_id, local_date, count(*),
               count(*) FILTER (WHERE txn_type IN ({types})),
               coalesce(sum(amount_minor) FILTER (WHERE txn_type IN ({types})), 0)
        FROM transactions WHERE local_date = ? GROUP BY terminal_id, local_date
        """,
        [day],
    ).fetchall()
    # pairs by their key (a 63-bit hash, as the look-ups match them), the terminal's
    # and the '*' rows in two statements: one DISTINCT over (terminal, card token)
    # feeding both was ~1.7x the CPU of the two at 10M transactions
    con.execute(
        f"""
        INSERT INTO card_days BY POSITION
        SELECT DISTINCT terminal_id, $day, {_PAIR_KEY} FROM transactions
        WHERE local_date = $day AND card_token IS NOT NULL
        """,
        {"day": day},
    ).fetchall()
    con.execute(
        f"""
        INSERT INTO card_days BY POSITION
        SELECT '*', $day, {_ANY_PAIR_KEY}
        FROM (SELECT DISTINCT card_token FROM transactions
              WHERE local_date = $day AND card_token IS NOT NULL)
        """,
        {"day": day},
    ).fetchall()
    con.execute(
        """
        INSERT INTO card_visit_days
        WITH today AS (
            SELECT terminal_id, pair_key FROM card_days WHERE local_date = $day
        ),
        before AS (  -- pairs are matched on their 63-bit key (see CARD_DAYS_COLUMNS)
            SELECT pair_key, max(local_date) AS prev_date FROM card_days
            WHERE local_date >= $day - $horizon AND local_date < $day
              AND pair_key IN (SELECT pair_key FROM today)
            GROUP BY pair_key
        )
        SELECT t.terminal_id, $day, b.prev_date, count(*)
        FROM today t LEFT JOIN before b USING (pair_key)
        GROUP BY t.terminal_id, b.prev_date
        """,
        {"day": day, "horizon": CARD_VISIT_HORIZON_DAYS},
    ).fetchall()


def refresh_day_tables(con: duckdb.DuckDBPyConnection, start: date, end: date) -> list[date]:
    """Bring ``card_visit_days`` and ``terminal_day_sales`` up to date for ``[start, end]``.

    A day is recomputed when its transaction count differs from the stored one (new
    day, late file); every later day up to ``end`` is recomputed with it (their
    ``prev_date`` may change) and stored days after ``end`` are dropped (they are
    recomputed when a run needs them). The tables depend on ``transactions`` only,
    never on the config, so backtests may refresh them too. Returns the recomputed
    days; an up-to-date range costs one scan of ``local_date`` over the range.
    """
    if not _writable_cache(con):
        raise ValueError(
            "refresh_day_tables needs a writable TrialGuard database; got a read-only "
            "connection. Open it with pipelines.storage.connect(path) (read_only=False)."
        )
    stale = _stale_days(con, start, end)
    if not stale:
        return []
    days = [stale[0] + timedelta(days=i) for i in range((end - stale[0]).days + 1)]
    con.execute("BEGIN TRANSACTION").fetchall()
    try:
        for table in _CACHE_TABLES:
            con.execute(f"DELETE FROM {table} WHERE local_date > ?", [end]).fetchall()
        for day in days:
            _refresh_day(con, day)
        con.execute("COMMIT").fetchall()
    except BaseException:
        con.execute("ROLLBACK").fetchall()
        raise
    return days


def read_terminal_cards_cached(
    con: duckdb.DuckDBPyConnection, start: date, end: date
) -> tuple[pl.DataFrame, int]:
    """:func:`read_terminal_cards` from ``card_visit_days`` (refreshed beforehand).

    A card seen at a terminal in ``[start, end]`` is counted on its first visit day in
    the window, the only one whose previous visit is before ``start`` (or unknown).
    """
    per_terminal = _frame(
        con,
        """
        SELECT s.terminal_id, coalesce(c.n_cards, 0)::BIGINT AS n_cards
        FROM (SELECT DISTINCT terminal_id FROM terminal_day_sales
              WHERE local_date BETWEEN $s AND $e) s
        LEFT JOIN (SELECT terminal_id, sum(n_cards) AS n_cards FROM card_visit_days
                   WHERE local_date BETWEEN $s AND $e AND terminal_id <> '*'
                     AND (prev_date IS NULL OR prev_date < $s)
                   GROUP BY terminal_id) c USING (terminal_id)
        """,
        {"s": start, "e": end},
    )
    n_active = con.execute(
        """
        SELECT coalesce(sum(n_cards), 0) FROM card_visit_days
        WHERE local_date BETWEEN $s AND $e AND terminal_id = '*'
          AND (prev_date IS NULL OR prev_date < $s)
        """,
        {"s": start, "e": end},
    ).fetchall()[0][0]
    return per_terminal, int(n_active)


def read_terminal_sales_cached(
    con: duckdb.DuckDBPyConnection, start: date, end: date
) -> pl.DataFrame:
    """:func:`read_terminal_sales` from ``terminal_day_sales`` (refreshed beforehand)."""
    return _frame(
        con,
        """
        SELECT terminal_id, sum(n_sales)::BIGINT AS n_sales,
               sum(sales_amount)::BIGINT AS sales_amount
        FROM terminal_day_sales WHERE local_date BETWEEN ? AND ?
        GROUP BY terminal_id HAVING sum(n_sales) > 0
        """,
        [start, end],
    )


def read_period_txns(con: duckdb.DuckDBPyConnection, periods: pl.DataFrame) -> pl.DataFrame:
    """Transactions at the compromised terminals inside their compromise periods."""
    if periods.height == 0:
        return pl.DataFrame(
            schema={
                "terminal_id": pl.String,
                "card_token": pl.String,
                "card_bin": pl.String,
                "card_last4": pl.String,
                "txn_time": pl.Datetime("us"),
            }
        )
    con.register("_tg_cpp_periods", periods.to_arrow())
    try:
        return _frame(
            con,
            """
            SELECT t.terminal_id, t.card_token, t.card_bin, t.card_last4, t.txn_time
            FROM transactions t JOIN _tg_cpp_periods p USING (terminal_id)
            WHERE t.local_date BETWEEN p.period_start AND p.period_end
            """,
        )
    finally:
        con.unregister("_tg_cpp_periods")


def read_exposure_texts(con: duckdb.DuckDBPyConnection, as_of: date) -> pl.DataFrame:
    """Free texts of ``as_of`` that contain the redaction marker (``TEXTS_SCHEMA``).

    Registry texts count on every day their version is the current one.
    """
    m = PAN_REDACTION_MARKER
    frame = _frame(
        con,
        """
        SELECT terminal_id, 'terminal_events.detail' AS source, event_id AS evidence_id,
               detail AS text
        FROM terminal_events
        WHERE event_time >= ? AND event_time < ? AND contains(detail, ?)
        UNION ALL
        SELECT terminal_id, 'terminal_events.extra', event_id, CAST(extra AS VARCHAR)
        FROM terminal_events
        WHERE event_time >= ? AND event_time < ? AND contains(CAST(extra AS VARCHAR), ?)
        UNION ALL
        SELECT terminal_id, 'transactions.extra', txn_id, CAST(extra AS VARCHAR)
        FROM transactions
        WHERE local_date = ? AND extra IS NOT NULL AND contains(CAST(extra AS VARCHAR), ?)
        UNION ALL
        SELECT terminal_id, src, 'registry:' || terminal_id || '@'
               || strftime(updated_at, '%Y-%m-%dT%H:%M:%S'), txt
        FROM (
            SELECT terminal_id, updated_at, merchant_name, CAST(extra AS VARCHAR) AS extra_text,
                   row_number() OVER (PARTITION BY terminal_id ORDER BY updated_at DESC) AS rn
            FROM terminals WHERE updated_at < ?
        ) cur,
        LATERAL (VALUES ('terminals.merchant_name', merchant_name),
                        ('terminals.extra', extra_text)) v(src, txt)
        WHERE rn = 1 AND contains(txt, ?)
        """,
        [
            datetime.combine(as_of, time()),
            _end(as_of),
            m,
            datetime.combine(as_of, time()),
            _end(as_of),
            m,
            as_of,
            m,
            _end(as_of),
            m,
        ],
    )
    return frame.rename(dict(zip(frame.columns, TEXTS_SCHEMA.names(), strict=True))).cast(
        dict(TEXTS_SCHEMA)
    )


def run_leakage(
    con: duckdb.DuckDBPyConnection, as_of: date, config: dict[str, Any] | None = None
) -> LeakageResult:
    """Run ``card_compromise``, ``fraud_hotspot`` and ``pan_exposure`` for day ``as_of``.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        An open TrialGuard database.
    as_of : date
        The run date; only reports known by its end are used.
    config : dict, optional
        Loaded thresholds (sections ``card_compromise``, ``fraud_hotspot``,
        ``pan_exposure``); ``models/thresholds.toml`` when omitted.

    Returns
    -------
    LeakageResult
        Detections (``DETECTION_SCHEMA``), at-risk cards (``AT_RISK_SCHEMA``) and the
        per-terminal statistics of the two statistical detectors.
    """
    cfg = _config(config)
    cpp = CompromiseParams.from_config(cfg)
    hot = HotspotParams.from_config(cfg)
    exp = ExposureParams.from_config(cfg)

    # reports and the reported cards' transactions, once for both detectors
    cpp_start, _ = cpp.window(as_of)
    hot_start, _ = hot.window(as_of)
    since = min(as_of - timedelta(days=cpp.report_days), hot_start)
    reports = read_known_reports(con, as_of, since)
    card_txns = read_reported_card_txns(con, as_of, since, min(cpp_start, hot_start))

    # per-terminal aggregates: from the incremental day tables when the database can
    # keep them (cost grows with the day's volume), else from raw transactions
    first = min(cpp_start, hot_start)
    cached = (as_of - first).days < CARD_VISIT_HORIZON_DAYS and _writable_cache(con)
    if cached:
        refresh_day_tables(con, first, as_of)
    read_cards = read_terminal_cards_cached if cached else read_terminal_cards
    read_sales = read_terminal_sales_cached if cached else read_terminal_sales
    read_days = read_visit_days_cached if cached else read_visit_days

    # card_compromise: terminals the reported cards visited are judged over a sub-window
    terminal_cards, _ = read_cards(con, cpp_start, as_of)
    visited = card_txns.get_column("terminal_id").unique().sort()
    visit_days = read_days(con, cpp_start, as_of, visited)
    compromise = score_card_compromise(reports, card_txns, terminal_cards, visit_days, as_of, cpp)
    at_risk = at_risk_cards(read_period_txns(con, compromise.periods), compromise.periods, reports)

    # fraud_hotspot
    sales = read_sales(con, hot_start, as_of)
    hotspot = score_fraud_hotspot(reports, card_txns, sales, as_of, hot)

    # pan_exposure
    exposure = score_pan_exposure(read_exposure_texts(con, as_of), as_of, exp)

    detections = pl.concat(
        [compromise.detections, hotspot.detections, exposure], how="vertical"
    ).cast(dict(DETECTION_SCHEMA))
    return LeakageResult(
        detections, at_risk.cast(dict(AT_RISK_SCHEMA)), compromise.stats, hotspot.stats
    )


def run_leakage_detectors(
    con: duckdb.DuckDBPyConnection, as_of: date, config: dict[str, Any] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Detections and at-risk cards of the leakage detectors for ``as_of``.

    Returns
    -------
    tuple of pl.DataFrame
        ``(detections, at_risk)``: ``DETECTION_SCHEMA`` rows (behaviours
        ``card_compromise``, ``fraud_hotspot``, ``pan_exposure``, day ``as_of``) and
        at-risk cards (``terminal_id, card_token, card_bin, card_last4, first_seen,
        last_seen``; tokens only) of the ``card_compromise`` terminals.
    """
    result = run_leakage(con, as_of, config)
    return result.detections, result.at_risk
