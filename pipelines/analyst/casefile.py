"""``trialguard show``: the case file of a terminal (registry, policy, flags with reasons, evidence, timeline, locations, dispositions).

Reads the store read-only; cards masked as BIN + ``******`` + last 4.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from features.schema import (
    DEFAULT_POLICY_ID,
    ENTRY_MODES,
)
from pipelines.analyst.common import AnalystError, _loads, _rows, emit, mask_card, open_db, to_json
from pipelines.settings import Settings

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
