"""The analyst's commands: ``flags`` (the queue), ``show`` (a case file), ``review`` (a decision).

Reading commands open the database read-only. ``review`` holds the run lock
while it appends to ``dispositions`` (never updating or deleting a row there)
and sets ``flags.status`` to the decision; detection keeps that status on later
runs (a dismissed episode stays dismissed, a snoozed one reopens after
``snooze_until``, a confirmed one stays confirmed).

Card numbers are shown as BIN + ``******`` + last 4 at most (PCI DSS 3.4.1);
``card_token`` is never shown.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from features.schema import (
    BEHAVIOURS,
    CATEGORIES,
    DECISIONS,
    DEFAULT_POLICY_ID,
    ENTRY_MODES,
    FLAG_STATUSES,
    SEVERITIES,
)
from pipelines.settings import Settings
from pipelines.storage import connect

#: Characters that make a spreadsheet read a cell as a formula (OWASP CSV injection),
#: including their full-width forms, which some spreadsheets also honour.
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r", "\n", "＝", "＋", "－", "＠")

FLAG_LIST_COLUMNS: tuple[str, ...] = (
    "flag_id",
    "terminal_id",
    "merchant_id",
    "merchant_name",
    "behaviour",
    "category",
    "severity",
    "score",
    "first_seen",
    "last_seen",
    "status",
    "snooze_until",
    "reasons",
)

MASK = "******"


class AnalystError(ValueError):
    """A command's input does not fit the data (unknown flag, bad decision ...)."""


# ---------------------------------------------------------------------------
# Small helpers shared by the analyst commands, verdicts and the report
# ---------------------------------------------------------------------------


def open_db(settings: Settings, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the store; a clear message when it is missing or another process writes to it."""
    try:
        return connect(settings.db_path, read_only=read_only)
    except duckdb.ConnectionException:
        if not read_only:
            raise
        # This process already holds a writable connection (e.g. a flow that writes the
        # report after detection); DuckDB then refuses a read-only one, so share its mode.
        return connect(settings.db_path, read_only=False)
    except duckdb.IOException as exc:
        raise AnalystError(
            f"cannot open {settings.db_path}: {exc}. Another TrialGuard command (a run or the "
            "nightly flow) may be writing to it; wait for it to finish and try again."
        ) from exc


def mask_card(card_bin: str | None, card_last4: str | None) -> str:
    """A card as BIN + ``******`` + last 4, never more.

    Examples
    --------
    >>> mask_card("622202", "1234")
    '622202******1234'
    >>> mask_card(None, "1234")
    '******1234'
    """
    bin_part = "".join(ch for ch in (card_bin or "") if ch.isdigit())[:8]
    last_part = "".join(ch for ch in (card_last4 or "") if ch.isdigit())[-4:]
    return f"{bin_part}{MASK}{last_part}"


def spreadsheet_safe(value: Any) -> Any:
    """Neutralise a text cell a spreadsheet would run as a formula (prefix ``'``).

    Examples
    --------
    >>> spreadsheet_safe("=HYPERLINK(\\"http://x\\")")
    '\\'=HYPERLINK("http://x")'
    >>> spreadsheet_safe("Noodle bar")
    'Noodle bar'
    >>> spreadsheet_safe(0.5)
    0.5
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as spreadsheet-safe CSV text (every text cell passed through :func:`spreadsheet_safe`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([spreadsheet_safe(_plain(row.get(c))) for c in columns])
    return buf.getvalue()


def _plain(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, date | datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "; ".join(str(v) for v in value)
    return value


def to_json(data: Any) -> str:
    """JSON text with dates as ISO strings."""
    return json.dumps(data, ensure_ascii=False, indent=2, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def emit(text: str, out: Path | None, *, bom: bool = False) -> None:
    """Print ``text`` or write it to ``out`` (UTF-8; with a BOM for spreadsheets when asked)."""
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8-sig" if bom else "utf-8")
    print(f"wrote {out}", file=sys.stderr)


def local_now(settings: Settings) -> datetime:
    """Now, as naive local wall-clock time in the configured zone (how the store keeps time)."""
    return datetime.now(ZoneInfo(settings.timezone)).replace(tzinfo=None, microsecond=0)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> list[dict]:
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _loads(text: Any, default: Any) -> Any:
    if text is None:
        return default
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return default


def reason_texts(reasons: Any) -> list[str]:
    """The ``text`` of each reason of a flag (JSON text or a parsed list)."""
    out = []
    for r in _loads(reasons, []) or []:
        if isinstance(r, Mapping):
            out.append(str(r.get("text") or r.get("code") or ""))
        else:
            out.append(str(r))
    return [t for t in out if t]


def _split(values: Iterable[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or ():
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def _check_codes(name: str, values: list[str], allowed: Sequence[str]) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise AnalystError(
            f"unknown {name} {', '.join(map(repr, bad))}; expected one of {', '.join(allowed)}"
        )


LATEST_TERMINALS_SQL = """
    SELECT * FROM terminals
    WHERE ? IS NULL OR updated_at < CAST(? AS DATE) + INTERVAL 1 DAY
    QUALIFY row_number() OVER (PARTITION BY terminal_id ORDER BY updated_at DESC) = 1
"""

LATEST_DISPOSITION_SQL = """
    SELECT * FROM dispositions
    QUALIFY row_number() OVER (PARTITION BY flag_id ORDER BY decided_at DESC) = 1
"""


# ---------------------------------------------------------------------------
# flags
# ---------------------------------------------------------------------------


def query_flags(
    con: duckdb.DuckDBPyConnection,
    *,
    on: date | None = None,
    since: date | None = None,
    behaviours: Sequence[str] = (),
    categories: Sequence[str] = (),
    severities: Sequence[str] = (),
    min_severity: str | None = None,
    statuses: Sequence[str] = ("open",),
    terminals: Sequence[str] = (),
    as_of: date | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Flags matching the filters, most severe first, then by score.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        The store.
    on : date, optional
        Only flags whose episode covers this day (``first_seen <= on <= last_seen``).
    since : date, optional
        Only flags seen on or after this day (``last_seen >= since``).
    behaviours, categories, severities, terminals : sequence of str
        Keep flags with one of these values (empty: any).
    min_severity : str, optional
        Keep flags at this severity or above.
    statuses : sequence of str
        Keep flags with one of these statuses (empty: any). A snoozed flag stays
        quiet through ``snooze_until`` and counts as ``open`` from the day after (as
        detection reopens it).
    as_of : date, optional
        The day snoozes are judged against (default: ``on``, else no snooze ends).
    limit : int, optional
        At most this many rows.

    Returns
    -------
    list of dict
        One dictionary per flag with :data:`FLAG_LIST_COLUMNS` plus
        ``reasons_list`` (parsed reasons) and ``evidence`` (ids).
    """
    _check_codes("behaviour", list(behaviours), tuple(BEHAVIOURS))
    _check_codes("category", list(categories), CATEGORIES)
    _check_codes(
        "severity", list(severities) + ([min_severity] if min_severity else []), SEVERITIES
    )
    _check_codes("status", list(statuses), FLAG_STATUSES)
    as_of = as_of or on
    rank = (
        "CASE severity "
        + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(SEVERITIES))
        + " END"
    )
    where, params = ["TRUE"], []
    if on is not None:
        where.append("first_seen <= ? AND last_seen >= ?")
        params += [on, on]
    if since is not None:
        where.append("last_seen >= ?")
        params.append(since)
    for column, values in (
        ("behaviour", behaviours),
        ("category", categories),
        ("severity", severities),
        ("terminal_id", terminals),
        ("status", statuses),
    ):
        if values:
            where.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params += list(values)
    if min_severity:
        where.append("severity_rank >= ?")
        params.append(SEVERITIES.index(min_severity))
    sql = f"""
        WITH reg AS ({LATEST_TERMINALS_SQL}),
             last_d AS ({LATEST_DISPOSITION_SQL}),
             listed AS (
                SELECT f.flag_id, f.terminal_id, f.merchant_id, reg.merchant_name, f.behaviour,
                       f.category, f.severity, f.score, f.first_seen, f.last_seen,
                       CASE WHEN f.status = 'snoozed' AND d.snooze_until IS NOT NULL
                                 AND CAST(? AS DATE) IS NOT NULL
                                 AND d.snooze_until < CAST(? AS DATE)
                            THEN 'open' ELSE f.status END AS status,
                       CASE WHEN f.status = 'snoozed' THEN d.snooze_until END AS snooze_until,
                       CAST(f.reasons AS VARCHAR) AS reasons_json,
                       CAST(f.evidence AS VARCHAR) AS evidence_json,
                       {rank.replace("severity", "f.severity", 1)} AS severity_rank
                FROM flags f
                LEFT JOIN reg ON reg.terminal_id = f.terminal_id
                LEFT JOIN last_d d ON d.flag_id = f.flag_id
             )
        SELECT * FROM listed
        WHERE {" AND ".join(where)}
        ORDER BY severity_rank DESC, score DESC, last_seen DESC, flag_id
        {"LIMIT " + str(int(limit)) if limit else ""}
    """
    rows = _rows(con, sql, [as_of, as_of, as_of, as_of, *params])
    out = []
    for r in rows:
        reasons = _loads(r.pop("reasons_json"), [])
        r.pop("severity_rank")
        r["reasons_list"] = reasons
        r["reasons"] = reason_texts(reasons)
        r["evidence"] = _loads(r.pop("evidence_json"), [])
        out.append(r)
    return out


def format_flags_table(rows: Sequence[Mapping[str, Any]], title: str = "Flags") -> str:
    """Flags as a rich table rendered to text."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title} ({len(rows)})", show_lines=False)
    for name in (
        "flag",
        "terminal",
        "merchant",
        "behaviour",
        "severity",
        "score",
        "seen",
        "status",
        "why",
    ):
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["flag_id"]),
            str(r["terminal_id"]),
            str(r.get("merchant_name") or ""),
            f"{r['behaviour']} ({r['category']})",
            str(r["severity"]),
            f"{r['score']:.2f}",
            f"{r['first_seen']} .. {r['last_seen']}",
            str(r["status"]) + (f" until {r['snooze_until']}" if r.get("snooze_until") else ""),
            "; ".join(r["reasons"]),
        )
    console = Console(file=io.StringIO(), width=200, markup=False, highlight=False)
    console.print(table)
    return console.file.getvalue()


def add_flags_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard flags``."""
    parser.add_argument(
        "--date", type=date.fromisoformat, help="flags whose episode covers this day"
    )
    parser.add_argument("--since", type=date.fromisoformat, help="flags seen on or after this day")
    parser.add_argument("--behaviour", action="append", help="behaviour code(s), comma separated")
    parser.add_argument("--category", action="append", help="category(ies), comma separated")
    parser.add_argument("--severity", action="append", help="severity(ies), comma separated")
    parser.add_argument("--min-severity", choices=SEVERITIES, help="this severity or above")
    parser.add_argument(
        "--status",
        action="append",
        help="status(es), comma separated, or 'all' (default: open)",
    )
    parser.add_argument("--terminal", action="append", help="terminal id(s), comma separated")
    parser.add_argument("--limit", type=int, help="at most this many flags")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--out", type=Path, help="write to this file instead of stdout")


def main_flags(args: argparse.Namespace, settings: Settings) -> int:
    """``trialguard flags``: list flags as a table, CSV or JSON."""
    statuses = _split(args.status) or ["open"]
    if "all" in statuses:
        statuses = []
    try:
        con = open_db(settings)
        try:
            rows = query_flags(
                con,
                on=args.date,
                since=args.since,
                behaviours=_split(args.behaviour),
                categories=_split(args.category),
                severities=_split(args.severity),
                min_severity=args.min_severity,
                statuses=statuses,
                terminals=_split(args.terminal),
                as_of=args.date or local_now(settings).date(),
                limit=args.limit,
            )
        finally:
            con.close()
    except (AnalystError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "csv":
        emit(to_csv(rows, FLAG_LIST_COLUMNS), args.out, bom=args.out is not None)
    elif args.format == "json":
        emit(
            to_json(
                [
                    {c: r.get(c) for c in (*FLAG_LIST_COLUMNS, "evidence")}
                    | {"reasons": r["reasons_list"]}
                    for r in rows
                ]
            ),
            args.out,
        )
    else:
        emit(format_flags_table(rows), args.out)
    return 0


# ---------------------------------------------------------------------------
# show
# ---------------------------------------------------------------------------

HAVERSINE_M = """
    2 * 6371008.8 * asin(sqrt(
        pow(sin(radians({lat2} - {lat1}) / 2), 2)
        + cos(radians({lat1})) * cos(radians({lat2})) * pow(sin(radians({lon2} - {lon1}) / 2), 2)
    ))
"""
#: Distance (m) of a transaction's reported location from the registered address.
TXN_DISTANCE_M = HAVERSINE_M.format(
    lat1="r.registered_lat", lon1="r.registered_lon", lat2="t.terminal_lat", lon2="t.terminal_lon"
)


def _group(rows: list[dict], key: str = "terminal_id") -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r.pop(key), []).append(r)
    return out


def case_files(
    con: duckdb.DuckDBPyConnection,
    terminal_ids: Sequence[str],
    *,
    as_of: date | None = None,
    max_evidence: int = 200,
    txn_table: str = "transactions",
) -> dict[str, dict[str, Any]]:
    """Case files of many terminals at once (one query per part, not per terminal).

    Same content as :func:`case_file`; terminals unknown everywhere are left out.
    """
    ids = list(dict.fromkeys(terminal_ids))
    if not ids:
        return {}
    cut = "AND t.local_date <= CAST(? AS DATE)" if as_of else ""
    cut_p = [as_of] if as_of else []
    ids_cte = "ids AS (SELECT unnest(CAST(? AS VARCHAR[])) AS terminal_id)"
    # The registry version in force on as_of (else the oldest one there is).
    cur_cte = f"""{ids_cte},
        r AS (SELECT * FROM terminals WHERE terminal_id IN (SELECT terminal_id FROM ids)
              QUALIFY row_number() OVER (
                  PARTITION BY terminal_id
                  ORDER BY (CAST(? AS DATE) IS NULL OR CAST(updated_at AS DATE) <= CAST(? AS DATE))
                           DESC,
                           CASE WHEN CAST(? AS DATE) IS NULL
                                  OR CAST(updated_at AS DATE) <= CAST(? AS DATE)
                                THEN updated_at END DESC NULLS LAST,
                           updated_at) = 1)"""
    cur_p = [ids, as_of, as_of, as_of, as_of]

    registry = _group(
        _rows(
            con,
            "SELECT * EXCLUDE (extra, file_id, line_no) FROM terminals "
            "WHERE terminal_id IN (SELECT unnest(CAST(? AS VARCHAR[]))) "
            "ORDER BY terminal_id, updated_at DESC",
            [ids],
        )
    )
    current = {
        r["terminal_id"]: r
        for r in _rows(
            con, f"WITH {cur_cte} SELECT * EXCLUDE (extra, file_id, line_no) FROM r", cur_p
        )
    }
    flags = _group(
        _rows(
            con,
            "SELECT terminal_id, flag_id, behaviour, category, severity, score, first_seen, "
            "last_seen, status, run_id, CAST(reasons AS VARCHAR) AS reasons, "
            "CAST(evidence AS VARCHAR) AS evidence FROM flags "
            "WHERE terminal_id IN (SELECT unnest(CAST(? AS VARCHAR[]))) "
            "ORDER BY terminal_id, last_seen DESC, score DESC, flag_id",
            [ids],
        )
    )
    n_txn = {
        r["terminal_id"]: r["n"]
        for r in _rows(
            con,
            f"SELECT t.terminal_id, count(*) AS n FROM {txn_table} t "
            f"WHERE t.terminal_id IN (SELECT unnest(CAST(? AS VARCHAR[]))) {cut} GROUP BY 1",
            [ids, *cut_p],
        )
    }
    dispositions = _rows(
        con,
        "SELECT d.flag_id, d.decision, d.analyst, d.note, d.decided_at, d.snooze_until "
        "FROM dispositions d JOIN flags f USING (flag_id) "
        "WHERE f.terminal_id IN (SELECT unnest(CAST(? AS VARCHAR[]))) "
        "ORDER BY d.decided_at, d.flag_id",
        [ids],
    )
    by_flag: dict[str, list[dict]] = {}
    for d in dispositions:
        by_flag.setdefault(d["flag_id"], []).append(d)
    evidence_ids: list[str] = []
    for fl in flags.values():
        for f in fl:
            f["reasons"] = _loads(f["reasons"], [])
            f["evidence"] = [str(e) for e in _loads(f["evidence"], [])]
            f["dispositions"] = by_flag.get(f["flag_id"], [])
            evidence_ids += f["evidence"]
    evidence_ids = list(dict.fromkeys(evidence_ids))

    policies = {
        p["policy_id"]: p
        for p in _rows(
            con,
            "SELECT policy_id, version, CAST(body AS VARCHAR) AS body, loaded_at FROM policies "
            "QUALIFY row_number() OVER (PARTITION BY policy_id ORDER BY loaded_at DESC) = 1",
        )
    }

    evidence_txns: dict[str, list[dict]] = {}
    events: dict[str, list[dict]] = {}
    if evidence_ids:
        evidence_txns = _group(
            _rows(
                con,
                f"""
            WITH {cur_cte}
            SELECT t.terminal_id, t.txn_id, t.txn_time, t.txn_type, t.amount_minor, t.currency,
                   t.card_bin, t.card_last4, t.card_type, t.card_country, t.entry_mode,
                   t.pin_entered, t.mcc, t.response_code, t.device_serial, t.terminal_lat,
                   t.terminal_lon, t.cell_id, t.ip_address, {TXN_DISTANCE_M} AS distance_m
            FROM {txn_table} t
            LEFT JOIN r ON r.terminal_id = t.terminal_id
            WHERE t.txn_id IN (SELECT unnest(CAST(? AS VARCHAR[])))
              AND t.terminal_id IN (SELECT terminal_id FROM ids)
            QUALIFY row_number() OVER (
                PARTITION BY t.terminal_id ORDER BY t.txn_time DESC, t.txn_id) <= ?
            ORDER BY t.terminal_id, t.txn_time DESC, t.txn_id
            """,
                [*cur_p, evidence_ids, max_evidence],
            )
        )
        events = _group(
            _rows(
                con,
                "SELECT terminal_id, event_id, event_time, event_type, device_serial, lat, lon, "
                "cell_id, ip_address, app_version, detail FROM terminal_events "
                "WHERE event_id IN (SELECT unnest(CAST(? AS VARCHAR[]))) "
                "AND terminal_id IN (SELECT unnest(CAST(? AS VARCHAR[]))) "
                "QUALIFY row_number() OVER (PARTITION BY terminal_id ORDER BY event_time DESC) <= ? "
                "ORDER BY terminal_id, event_time DESC",
                [evidence_ids, ids, max_evidence],
            )
        )

    timeline = _group(
        _rows(
            con,
            f"""
        SELECT t.terminal_id, t.local_date AS day,
               count(*) AS txn_count,
               count(*) FILTER (WHERE t.response_code = '00') AS approved_count,
               count(*) FILTER (WHERE t.response_code <> '00') AS declined_count,
               coalesce(sum(t.amount_minor) FILTER (WHERE t.response_code = '00'), 0)
                   AS approved_amount_minor,
               coalesce(sum(t.amount_minor), 0) AS amount_minor,
               count(DISTINCT t.card_token) AS distinct_cards
        FROM {txn_table} t
        WHERE t.terminal_id IN (SELECT unnest(CAST(? AS VARCHAR[]))) {cut}
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
            [ids, *cut_p],
        )
    )
    distance_by_day = _group(
        _rows(
            con,
            f"""
        WITH {cur_cte}
        SELECT t.terminal_id, t.local_date AS day, count(*) AS located,
               median({TXN_DISTANCE_M}) AS median_m, max({TXN_DISTANCE_M}) AS max_m
        FROM {txn_table} t JOIN r ON r.terminal_id = t.terminal_id
        WHERE t.terminal_lat IS NOT NULL AND t.terminal_lon IS NOT NULL
              AND r.registered_lat IS NOT NULL AND r.registered_lon IS NOT NULL {cut}
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
            [*cur_p, *cut_p],
        )
    )
    response_codes = _group(
        _rows(
            con,
            f"SELECT t.terminal_id, t.response_code, count(*) AS n FROM {txn_table} t "
            f"WHERE t.terminal_id IN (SELECT unnest(CAST(? AS VARCHAR[]))) {cut} "
            "GROUP BY 1, 2 ORDER BY 1, n DESC, 2",
            [ids, *cut_p],
        )
    )
    entry_modes = _group(
        _rows(
            con,
            f"SELECT t.terminal_id, t.entry_mode, count(*) AS n FROM {txn_table} t "
            f"WHERE t.terminal_id IN (SELECT unnest(CAST(? AS VARCHAR[]))) {cut} "
            "GROUP BY 1, 2 ORDER BY 1, n DESC, 2",
            [ids, *cut_p],
        )
    )
    at_risk = {
        r["terminal_id"]: r["n"]
        for r in _rows(
            con,
            "SELECT terminal_id, count(DISTINCT card_token) AS n FROM at_risk_cards "
            "WHERE terminal_id IN (SELECT unnest(CAST(? AS VARCHAR[]))) GROUP BY 1",
            [ids],
        )
    }

    out: dict[str, dict[str, Any]] = {}
    for tid in ids:
        if tid not in registry and tid not in flags and not n_txn.get(tid):
            continue
        cur = current.get(tid)
        tflags = flags.get(tid, [])
        # An unregistered terminal, or one naming an unknown policy, is judged under default.
        registered = cur["policy_id"] if cur is not None else None
        policy = None
        for pid in (registered, DEFAULT_POLICY_ID):
            if pid in policies:
                policy = dict(policies[pid]) | {"body": _loads(policies[pid]["body"], {})}
                if pid == registered:
                    policy["applies_because"] = "registered policy"
                elif registered is None:
                    policy["applies_because"] = "not in the registry; the default applies"
                else:
                    policy["applies_because"] = (
                        f"policy {registered!r} is not loaded; the default applies"
                    )
                break
        txns = evidence_txns.get(tid, [])
        for t in txns:
            t["card"] = mask_card(t.pop("card_bin"), t.pop("card_last4"))
            t["entry_mode_name"] = ENTRY_MODES.get(t["entry_mode"], t["entry_mode"])
            t["flag_ids"] = [f["flag_id"] for f in tflags if t["txn_id"] in f["evidence"]]
        days = timeline.get(tid, [])
        for day in days:
            day["behaviours"] = sorted(
                {f["behaviour"] for f in tflags if f["first_seen"] <= day["day"] <= f["last_seen"]}
            )
        modes = entry_modes.get(tid, [])
        for e in modes:
            e["name"] = ENTRY_MODES.get(e["entry_mode"], "unknown")
        out[tid] = {
            "terminal_id": tid,
            "as_of": as_of,
            "registry": registry.get(tid, []),
            "current": cur,
            "policy": policy,
            "flags": tflags,
            "evidence_transactions": txns,
            "evidence_events": events.get(tid, []),
            "timeline": days,
            "distance_by_day": distance_by_day.get(tid, []),
            "response_codes": response_codes.get(tid, []),
            "entry_modes": modes,
            "dispositions": [d for f in tflags for d in f["dispositions"]],
            "at_risk_cards": at_risk.get(tid, 0),
            "txn_count": n_txn.get(tid, 0),
        }
    return out


def case_file(
    con: duckdb.DuckDBPyConnection,
    terminal_id: str,
    *,
    as_of: date | None = None,
    max_evidence: int = 200,
    txn_table: str = "transactions",
) -> dict[str, Any]:
    """Everything an analyst needs to judge one terminal.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        The store.
    terminal_id : str
        The terminal (DE41).
    as_of : date, optional
        Ignore activity after this day and take the registry version in force on it
        (default: everything stored, the latest version).
    max_evidence : int
        At most this many evidence transactions (and events), most recent first.
    txn_table : str
        Table or view to read transactions from (the report narrows it first).

    Returns
    -------
    dict
        ``terminal_id``, ``registry`` (versions, newest first), ``current`` (the version
        in force), ``policy`` (with ``applies_because``), ``flags`` (each with ``reasons``,
        ``evidence`` and its ``dispositions``), ``evidence_transactions`` (card masked,
        ``distance_m`` from the registered address), ``evidence_events``, ``timeline``
        (per day), ``distance_by_day``, ``response_codes``, ``entry_modes``,
        ``dispositions``, ``at_risk_cards`` (count) and ``txn_count``.

    Raises
    ------
    AnalystError
        The terminal is neither in the registry nor in any transaction or flag.
    """
    found = case_files(
        con, [terminal_id], as_of=as_of, max_evidence=max_evidence, txn_table=txn_table
    )
    if terminal_id not in found:
        raise AnalystError(
            f"terminal {terminal_id!r} is not in the registry, has no transactions and no flags; "
            "check the id (8 characters, DE41) or list flagged terminals with `trialguard flags`"
        )
    return found[terminal_id]


def format_case_file(case: Mapping[str, Any]) -> str:
    """A case file as rich tables rendered to text."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=io.StringIO(), width=200, markup=False, highlight=False)
    cur = case["current"]
    console.rule(f"Terminal {case['terminal_id']}")
    if cur is None:
        console.print("Not in the registry (unregistered use).")
    else:
        console.print(
            f"{cur['merchant_name']} | merchant {cur['merchant_id']} | MCC {cur['registered_mcc']} | "
            f"{cur['terminal_kind']} {cur.get('terminal_model') or ''} | status {cur['status']} | "
            f"trial {cur['trial_start']} .. {cur['trial_end']} | policy {cur['policy_id']}"
        )
    reg = Table(title="Registry versions (newest first)")
    reg_cols = (
        "updated_at",
        "status",
        "merchant_name",
        "registered_mcc",
        "serial_number",
        "registered_lat",
        "registered_lon",
        "policy_id",
        "trial_start",
        "trial_end",
    )
    for c in reg_cols:
        reg.add_column(c, overflow="fold")
    for r in case["registry"]:
        reg.add_row(*("" if r.get(c) is None else str(r[c]) for c in reg_cols))
    if case["registry"]:
        console.print(reg)
    pol = case["policy"]
    if pol:
        console.print(
            f"Policy {pol['policy_id']} (version {str(pol['version'])[:12]}, {pol['applies_because']}): "
            + json.dumps(pol["body"], ensure_ascii=False, sort_keys=True)
        )
    else:
        console.print("Policy: none loaded")
    ft = Table(title=f"Flags ({len(case['flags'])})")
    for c in ("flag", "behaviour", "severity", "score", "seen", "status", "reasons", "decisions"):
        ft.add_column(c, overflow="fold")
    for f in case["flags"]:
        ft.add_row(
            f["flag_id"],
            f"{f['behaviour']} ({f['category']})",
            f["severity"],
            f"{f['score']:.2f}",
            f"{f['first_seen']} .. {f['last_seen']}",
            f["status"],
            "\n".join(_reason_line(r) for r in f["reasons"]),
            "\n".join(
                f"{d['decided_at']} {d['analyst']}: {d['decision']}"
                + (f" until {d['snooze_until']}" if d["snooze_until"] else "")
                + (f" - {d['note']}" if d["note"] else "")
                for d in f["dispositions"]
            ),
        )
    console.print(ft)
    tl = Table(title="Daily timeline")
    for c in ("day", "txns", "approved", "declined", "approved amount", "cards", "flagged"):
        tl.add_column(c)
    for d in case["timeline"]:
        tl.add_row(
            str(d["day"]),
            str(d["txn_count"]),
            str(d["approved_count"]),
            str(d["declined_count"]),
            str(d["approved_amount_minor"]),
            str(d["distinct_cards"]),
            ", ".join(d["behaviours"]),
        )
    console.print(tl)
    et = Table(title=f"Evidence transactions ({len(case['evidence_transactions'])})")
    for c in (
        "txn_id",
        "time",
        "type",
        "amount",
        "card",
        "entry",
        "mcc",
        "resp",
        "distance",
        "flags",
    ):
        et.add_column(c, overflow="fold")
    for t in case["evidence_transactions"]:
        et.add_row(
            str(t["txn_id"]),
            str(t["txn_time"]),
            str(t["txn_type"]),
            str(t["amount_minor"]),
            t["card"],
            f"{t['entry_mode']} {t['entry_mode_name']}",
            str(t["mcc"]),
            str(t["response_code"]),
            "" if t["distance_m"] is None else f"{t['distance_m'] / 1000:.1f} km",
            ", ".join(t["flag_ids"]),
        )
    console.print(et)
    if case["evidence_events"]:
        ev = Table(title="Evidence events")
        ev_cols = ("event_time", "event_type", "device_serial", "cell_id", "ip_address", "detail")
        for c in ev_cols:
            ev.add_column(c, overflow="fold")
        for e in case["evidence_events"]:
            ev.add_row(*("" if e.get(c) is None else str(e[c]) for c in ev_cols))
        console.print(ev)
    console.print(f"Cards at risk recorded for this terminal: {case['at_risk_cards']}")
    return console.file.getvalue()


def _reason_line(r: Any) -> str:
    if not isinstance(r, Mapping):
        return str(r)
    extra = ""
    if r.get("observed") is not None:
        extra = f" (observed {r['observed']:.6g}"
        extra += f", threshold {r['threshold']:.6g})" if r.get("threshold") is not None else ")"
    return f"{r.get('text') or r.get('code')}{extra}"


def add_show_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard show``."""
    parser.add_argument("terminal_id", help="the terminal (DE41)")
    parser.add_argument("--date", type=date.fromisoformat, help="ignore activity after this day")
    parser.add_argument("--max-evidence", type=int, default=200, help="evidence rows to show")
    parser.add_argument("--json", action="store_true", help="JSON instead of tables")
    parser.add_argument("--out", type=Path, help="write to this file instead of stdout")


def main_show(args: argparse.Namespace, settings: Settings) -> int:
    """``trialguard show TERMINAL_ID``: the case file."""
    try:
        con = open_db(settings)
        try:
            case = case_file(
                con, args.terminal_id, as_of=args.date, max_evidence=args.max_evidence
            )
        finally:
            con.close()
    except (AnalystError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    emit(to_json(case) if args.json else format_case_file(case), args.out)
    return 0


# ---------------------------------------------------------------------------
# review
# ---------------------------------------------------------------------------


def record_review(
    con: duckdb.DuckDBPyConnection,
    flag_id: str,
    decision: str,
    *,
    analyst: str,
    note: str,
    until: date | None = None,
    now: datetime,
) -> dict[str, Any]:
    """Append an analyst's decision to ``dispositions`` and set the flag's status.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        The store, writable.
    flag_id : str
        The flag decided on; it must exist.
    decision : str
        ``confirmed``, ``dismissed`` or ``snoozed``.
    analyst, note : str
        Who decided and why (both required, not blank).
    until : date, optional
        Required for ``snoozed`` and only allowed for it: the flag stays quiet through
        this day and reopens the day after; it must be after the day of the decision.
    now : datetime
        When the decision is made (local wall-clock time, naive).

    Returns
    -------
    dict
        The disposition row written, plus the flag's previous status.

    Raises
    ------
    AnalystError
        Unknown flag, unknown decision, missing/extra ``until``, blank analyst or note.
    """
    if decision not in DECISIONS:
        raise AnalystError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    if not analyst or not analyst.strip():
        raise AnalystError("--analyst is blank; give the name of the analyst who decides")
    if not note or not note.strip():
        raise AnalystError("--note is blank; say why, so the decision can be audited later")
    if decision == "snoozed":
        if until is None:
            raise AnalystError(
                "a snoozed decision needs --until DATE (the flag stays quiet through that day)"
            )
        if until <= now.date():
            raise AnalystError(
                f"--until {until} is not after today ({now.date()}); a snooze must end in the "
                f"future, e.g. --until {now.date() + timedelta(days=7)}"
            )
    elif until is not None:
        raise AnalystError(f"--until only applies to snoozed decisions, not {decision!r}")
    found = con.execute("SELECT status FROM flags WHERE flag_id = ?", [flag_id]).fetchone()
    if found is None:
        raise AnalystError(
            f"no flag {flag_id!r}; list flag ids with `trialguard flags` (add --status all "
            "to include decided ones)"
        )
    row = {
        "flag_id": flag_id,
        "decision": decision,
        "analyst": analyst.strip(),
        "note": note.strip(),
        "decided_at": now,
        "snooze_until": until,
    }
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "INSERT INTO dispositions (flag_id, decision, analyst, note, decided_at, snooze_until) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            list(row.values()),
        )
        con.execute("UPDATE flags SET status = ? WHERE flag_id = ?", [decision, flag_id])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return row | {"previous_status": found[0]}


def add_review_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard review``."""
    parser.add_argument("flag_id", help="the flag decided on")
    parser.add_argument("--decision", required=True, choices=DECISIONS)
    parser.add_argument(
        "--until", type=date.fromisoformat, help="snoozed only: stay quiet until this day"
    )
    parser.add_argument("--note", required=True, help="why (kept for audit)")
    parser.add_argument("--analyst", required=True, help="who decides")


def main_review(args: argparse.Namespace, settings: Settings) -> int:
    """``trialguard review FLAG_ID``: record a decision."""
    from pipelines.runlock import RunLockError, run_lock

    try:
        with run_lock(settings, "review"):
            con = open_db(settings, read_only=False)
            try:
                row = record_review(
                    con,
                    args.flag_id,
                    args.decision,
                    analyst=args.analyst,
                    note=args.note,
                    until=args.until,
                    now=local_now(settings),
                )
            finally:
                con.close()
    except (AnalystError, RunLockError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    until = f" until {row['snooze_until']}" if row["snooze_until"] else ""
    print(
        f"{row['flag_id']}: {row['previous_status']} -> {row['decision']}{until} "
        f"by {row['analyst']} at {row['decided_at']}"
    )
    return 0
