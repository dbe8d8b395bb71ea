"""The sections of the offline HTML report: summary, queue, behaviours, verdicts, data quality and one page per case."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb

from features.schema import BEHAVIOURS, SEVERITIES
from pipelines.analyst.charts import _money, esc, svg_daily, svg_distance, svg_hbars, svg_sparkline
from pipelines.analyst.common import _loads, _rows
from pipelines.settings import Settings

TREND_DAYS = 14


MAX_CASES = 300


MAX_EVIDENCE_ROWS = 25


def _sev(severity: str) -> str:
    return f'<span class="sev sev-{esc(severity)}">{esc(severity)}</span>'


def case_anchor(terminal_id: str) -> str:
    """The element id of a terminal's case page (``case-<terminal_id>``)."""
    return "case-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in terminal_id)


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    num: Sequence[int] = (),
    attrs: Sequence[str] | None = None,
    table_id: str = "",
) -> str:
    """An HTML table from already-escaped cells."""
    head = "".join(
        f"<th{' class=num' if i in num else ''}>{esc(h)}</th>" for i, h in enumerate(headers)
    )
    body = []
    for k, row in enumerate(rows):
        cells = "".join(
            f"<td{' class=num' if i in num else ''}>{c}</td>" for i, c in enumerate(row)
        )
        extra = f" {attrs[k]}" if attrs else ""
        body.append(f"<tr{extra}>{cells}</tr>")
    tid = f' id="{esc(table_id)}"' if table_id else ""
    return f"<table{tid}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _summary(con: duckdb.DuckDBPyConnection, as_of: date, queue: list[dict]) -> str:
    run = _rows(
        con,
        "SELECT run_id, command, status, started_at, finished_at, duration_s, code_version, "
        "CAST(row_counts AS VARCHAR) AS row_counts, message FROM runs WHERE as_of = ? "
        # the nightly flow writes this report while its own row is still 'running':
        # show the latest finished run (the detection) before any unfinished one
        "ORDER BY status = 'running', started_at DESC LIMIT 1",
        [as_of],
    )
    day = con.execute(
        "SELECT count(*), count(DISTINCT terminal_id), "
        "coalesce(sum(amount_minor) FILTER (WHERE response_code = '00'), 0), "
        "count(*) FILTER (WHERE response_code <> '00') FROM transactions WHERE local_date = ?",
        [as_of],
    ).fetchone()
    touched = con.execute(
        "SELECT count(*) FILTER (WHERE first_seen = ?), count(*) FILTER (WHERE last_seen = ?), "
        "count(DISTINCT terminal_id) FILTER (WHERE last_seen = ?) FROM flags WHERE first_seen <= ?",
        [as_of, as_of, as_of, as_of],
    ).fetchone()
    at_risk = con.execute(
        "SELECT count(DISTINCT a.card_token) FROM at_risk_cards a JOIN flags f USING (flag_id) "
        "WHERE f.last_seen = ?",
        [as_of],
    ).fetchone()[0]
    by_sev = {s: sum(f["severity"] == s for f in queue) for s in SEVERITIES}
    kpis = [
        (len(queue), "open flags in the queue"),
        (by_sev["critical"] + by_sev["high"], "critical or high"),
        (touched[0], "new flags tonight"),
        (touched[1], "flags seen tonight"),
        (touched[2], "terminals flagged tonight"),
        (len({f["terminal_id"] for f in queue}), "terminals in the queue"),
        (day[0], f"transactions on {as_of}"),
        (day[1], "active terminals"),
        (_money(day[2]), "approved amount"),
        (at_risk, "cards at risk (tonight's flags)"),
    ]
    html_kpis = "".join(
        f'<div class="kpi"><b>{esc(v)}</b><span>{esc(t)}</span></div>' for v, t in kpis
    )
    if run:
        r = run[0]
        state = "ok" if r["status"] == "succeeded" else "bad"
        run_line = (
            f"Run <code>{esc(r['run_id'])}</code> ({esc(r['command'])}): "
            f'<span class="{state}">{esc(r["status"])}</span>, started '
            f"{esc(r['started_at'].replace(microsecond=0) if r['started_at'] else '?')}, "
            f"{esc(round(r['duration_s'] or 0, 1))} s, code {esc(r['code_version'] or '?')}"
            + (f" - {esc(r['message'])}" if r["message"] else "")
        )
    else:
        run_line = f'<span class="bad">No detection run recorded for {esc(as_of)}.</span>'
    sev_line = ", ".join(f"{_sev(s)} {by_sev[s]}" for s in reversed(SEVERITIES))
    return (
        f'<section id="summary"><h2>Night of {esc(as_of)}</h2><p>{run_line}</p>'
        f'<div class="kpis">{html_kpis}</div><p>Queue by severity: {sev_line}</p></section>'
    )


def _queue(queue: list[dict], cases: set[str]) -> str:
    rows, attrs = [], []
    for f in queue:
        tid = f["terminal_id"]
        term = f'<a href="#{esc(case_anchor(tid))}">{esc(tid)}</a>' if tid in cases else esc(tid)
        reasons = "".join(f"<li>{esc(t)}</li>" for t in f["reasons"])
        rows.append(
            [
                _sev(f["severity"]),
                f"{f['score']:.2f}",
                f'<code class="flag-id">{esc(f["flag_id"])}</code>',
                term,
                esc(f.get("merchant_name") or ""),
                f'{esc(f["behaviour"])}<br><span class="muted">{esc(f["category"])}</span>',
                f'<span class="nw">{esc(f["first_seen"])}</span> .. <span class="nw">{esc(f["last_seen"])}</span>',
                f'<ul class="reasons">{reasons}</ul>',
            ]
        )
        attrs.append(f'data-flag-id="{esc(f["flag_id"])}" data-severity="{esc(f["severity"])}"')
    table = _table(
        ["severity", "score", "flag", "terminal", "merchant", "behaviour", "seen", "why"],
        rows,
        num=(1,),
        attrs=attrs,
        table_id="queue-table",
    )
    return (
        f'<section id="queue"><h2>Review queue ({len(queue)} open flags, most severe first)</h2>'
        '<input id="queue-filter" class="filter" type="search" '
        'placeholder="Filter: terminal, merchant, behaviour...">'
        f"{table}<p class=muted>Decide with <code>trialguard review FLAG_ID --decision "
        "confirmed|dismissed|snoozed --note TEXT --analyst NAME</code>.</p></section>"
    )


def _behaviours(con: duckdb.DuckDBPyConnection, as_of: date) -> str:
    start = as_of - timedelta(days=TREND_DAYS - 1)
    daily = _rows(
        con,
        """
        SELECT f.behaviour, CAST(d.day AS DATE) AS day, count(f.flag_id) AS n
        FROM range(CAST(? AS DATE), CAST(? AS DATE) + INTERVAL 1 DAY, INTERVAL 1 DAY) d(day)
        JOIN flags f ON f.first_seen <= CAST(d.day AS DATE) AND f.last_seen >= CAST(d.day AS DATE)
        GROUP BY ALL
        """,
        [start, as_of],
    )
    totals = _rows(
        con,
        """
        SELECT behaviour, count(*) AS episodes,
               count(*) FILTER (WHERE status = 'open') AS open,
               count(*) FILTER (WHERE status = 'confirmed') AS confirmed,
               count(*) FILTER (WHERE status = 'dismissed') AS dismissed,
               count(*) FILTER (WHERE first_seen = ?) AS new_tonight,
               count(*) FILTER (WHERE last_seen = ?) AS seen_tonight
        FROM flags WHERE first_seen <= ? GROUP BY 1
        """,
        [as_of, as_of, as_of],
    )
    by_b = {t["behaviour"]: t for t in totals}
    series: dict[str, dict[date, int]] = {}
    for r in daily:
        series.setdefault(r["behaviour"], {})[r["day"]] = r["n"]
    days = [start + timedelta(days=i) for i in range(TREND_DAYS)]
    rows = []
    for b, cat in BEHAVIOURS.items():
        t = by_b.get(b, {})
        values = [series.get(b, {}).get(d, 0) for d in days]
        rows.append(
            [
                esc(b),
                esc(cat),
                *(
                    esc(t.get(k, 0))
                    for k in (
                        "seen_tonight",
                        "new_tonight",
                        "open",
                        "confirmed",
                        "dismissed",
                        "episodes",
                    )
                ),
                svg_sparkline(values),
            ]
        )
    table = _table(
        [
            "behaviour",
            "category",
            "seen tonight",
            "new tonight",
            "open",
            "confirmed",
            "dismissed",
            "episodes",
            f"flags active per day, last {TREND_DAYS} days",
        ],
        rows,
        num=(2, 3, 4, 5, 6, 7),
        table_id="behaviour-table",
    )
    return f'<section id="behaviours"><h2>Behaviours</h2>{table}</section>'


def _verdicts(con: duckdb.DuckDBPyConnection, as_of: date, cases: set[str]) -> str:
    from pipelines.analyst.verdicts import compute_verdicts

    rows = compute_verdicts(con, as_of)
    order = {"terminate": 0, "extend": 1, "pass": 2}
    rows.sort(key=lambda r: (order[r["verdict"]], r["trial_end"], r["terminal_id"]))
    cells = []
    for r in rows:
        tid = r["terminal_id"]
        term = f'<a href="#{esc(case_anchor(tid))}">{esc(tid)}</a>' if tid in cases else esc(tid)
        ev = "".join(f"<li>{esc(e)}</li>" for e in r["evidence"])
        cells.append(
            [
                term,
                esc(r["merchant_name"] or ""),
                f'{esc(r["trial_end"])} <span class="muted">({r["days_left"]:+d} d)</span>',
                f'<span class="verdict verdict-{esc(r["verdict"])}">{esc(r["verdict"])}</span>',
                esc(r["rationale"]),
                f'<ul class="reasons">{ev}</ul>' if ev else "-",
            ]
        )
    counts = ", ".join(f"{sum(r['verdict'] == v for r in rows)} {v}" for v in order)
    body = (
        _table(
            ["terminal", "merchant", "trial end", "verdict", "rationale", "evidence"],
            cells,
            table_id="verdict-table",
        )
        if rows
        else '<p class="muted">No trial ends in the next 7 days.</p>'
    )
    return (
        f'<section id="verdicts"><h2>Trial-end verdicts (trials ending {esc(as_of)} .. '
        f"{esc(as_of + timedelta(days=7))}: {esc(counts)})</h2>{body}</section>"
    )


def _rel_link(target: Path, out_dir: Path) -> str:
    return quote(Path(os.path.relpath(target.resolve(), out_dir.resolve())).as_posix())


def _data_quality(
    con: duckdb.DuckDBPyConnection, as_of: date, settings: Settings, out_dir: Path
) -> str:
    # The files loaded up to the morning after the night (the nightly ingests then); when
    # there are none (a replay of an old night, the demo), the latest files instead.
    files_sql = (
        "SELECT file_id, source_path, kind, status, rows_read, accepted, quarantined, duplicates, "
        "pan_redactions, gate_success, message, started_at FROM ingest_manifest {where} "
        "ORDER BY started_at DESC NULLS LAST LIMIT 30"
    )
    files = _rows(
        con,
        files_sql.format(
            where="WHERE started_at IS NULL OR started_at < CAST(? AS DATE) + INTERVAL 2 DAY"
        ),
        [as_of],
    )
    scope = "recent file(s)"
    if not files:
        files = _rows(con, files_sql.format(where=""))
        scope = "file(s), the latest loaded (all after this night)"
    ids = [f["file_id"] for f in files] or [""]
    marks = ", ".join("?" for _ in ids)
    gates = _rows(
        con,
        f"SELECT file_id, kind, suite, success, evaluated, failed, "
        f"CAST(details AS VARCHAR) AS details, docs_path, validated_at FROM gate_results "
        f"WHERE file_id IN ({marks}) ORDER BY validated_at DESC",
        ids,
    )
    quarantine = _rows(
        con,
        f"SELECT kind, reason, count(*) AS n FROM quarantine WHERE file_id IN ({marks}) "
        "GROUP BY 1, 2 ORDER BY n DESC, 1, 2 LIMIT 20",
        ids,
    )
    totals = {
        k: sum((f[k] or 0) for f in files)
        for k in ("rows_read", "accepted", "quarantined", "duplicates", "pan_redactions")
    }
    rejected = sum(f["status"] == "rejected" for f in files)
    failed_gates = sum(not g["success"] for g in gates)
    docs_index = settings.data_docs_dir / "index.html"
    if docs_index.is_file():
        docs = (
            f'<a id="data-docs-link" href="{esc(_rel_link(docs_index, out_dir))}">'
            "Great Expectations Data Docs</a>"
        )
    else:
        docs = (
            f'<span class="muted">Great Expectations Data Docs are not rendered yet '
            f"(expected at {esc(docs_index)}).</span>"
        )
    file_rows = [
        [
            esc(f["source_path"]),
            esc(f["kind"]),
            f'<span class="{"ok" if f["status"] == "loaded" else "bad"}">{esc(f["status"])}</span>',
            *(
                esc(f[k] if f[k] is not None else "")
                for k in ("rows_read", "accepted", "quarantined", "duplicates", "pan_redactions")
            ),
            (
                ""
                if f["gate_success"] is None
                else f'<span class="{"ok" if f["gate_success"] else "bad"}">'
                f"{'passed' if f['gate_success'] else 'failed'}</span>"
            ),
            esc(f["message"] or ""),
        ]
        for f in files
    ]
    gate_rows = []
    for g in gates:
        details = _loads(g["details"], []) or []
        failed = "".join(f"<li>{esc(_detail(d))}</li>" for d in details[:5])
        link = ""
        if g["docs_path"]:
            p = Path(g["docs_path"])
            link = f'<a href="{esc(_rel_link(p, out_dir))}">page</a>' if p.exists() else ""
        gate_rows.append(
            [
                esc(g["kind"]),
                esc(g["suite"]),
                f'<span class="{"ok" if g["success"] else "bad"}">{"passed" if g["success"] else "failed"}</span>',
                esc(g["evaluated"]),
                esc(g["failed"]),
                f'<ul class="reasons">{failed}</ul>',
                link,
            ]
        )
    q_rows = [[esc(q["kind"]), esc(q["reason"]), esc(q["n"])] for q in quarantine]
    return (
        '<section id="data-quality"><h2>Data quality</h2>'
        f"<p>{len(files)} {esc(scope)}: {rejected} rejected, {failed_gates} failed gate(s); "
        f"{totals['rows_read']} rows read, {totals['accepted']} accepted, "
        f"{totals['quarantined']} quarantined, {totals['duplicates']} duplicates, "
        f"{totals['pan_redactions']} card numbers redacted. {docs}</p>"
        "<h3>Files</h3>"
        + _table(
            [
                "file",
                "kind",
                "status",
                "rows",
                "accepted",
                "quarantined",
                "duplicates",
                "redactions",
                "gate",
                "message",
            ],
            file_rows,
            num=(3, 4, 5, 6, 7),
            table_id="files-table",
        )
        + "<h3>Validation gates</h3>"
        + _table(
            ["kind", "suite", "result", "checks", "failed", "failed expectations", "docs"],
            gate_rows,
            num=(3, 4),
            table_id="gates-table",
        )
        + "<h3>Quarantine reasons</h3>"
        + (
            _table(["kind", "reason", "rows"], q_rows, num=(2,), table_id="quarantine-table")
            if q_rows
            else '<p class="muted">No quarantined rows.</p>'
        )
        + "</section>"
    )


def _num(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else ("-" if v is None else str(v))


def _detail(d: Any) -> str:
    if isinstance(d, Mapping):
        return "; ".join(f"{k}: {v}" for k, v in d.items())
    return str(d)


def _case_page(case: Mapping[str, Any]) -> str:
    tid = case["terminal_id"]
    cur = case["current"]
    if cur is None:
        facts = "<p><b>Not in the registry</b> (unregistered use).</p>"
        geofence = None
    else:
        facts = (
            "<dl class=facts>"
            + "".join(
                f"<dt>{esc(k)}</dt><dd>{v}</dd>"
                for k, v in (
                    (
                        "merchant",
                        (
                            f'{esc(cur["merchant_name"])} <span class="muted">'
                            f"{esc(cur['merchant_id'])}</span>"
                        ),
                    ),
                    ("registered MCC", esc(cur["registered_mcc"])),
                    (
                        "kind / model",
                        f"{esc(cur['terminal_kind'])} {esc(cur.get('terminal_model') or '')}",
                    ),
                    (
                        "registered at",
                        (
                            f"{esc(cur['registered_lat'])}, {esc(cur['registered_lon'])} "
                            f"(region {esc(cur['region_code'])})"
                        ),
                    ),
                    ("status", esc(cur["status"])),
                    ("trial", f"{esc(cur['trial_start'])} .. {esc(cur['trial_end'])}"),
                    ("registry versions", esc(len(case["registry"]))),
                )
            )
            + "</dl>"
        )
        geofence = None
        if case["policy"]:
            fence = (case["policy"]["body"] or {}).get("geofence_m") or {}
            if isinstance(fence, Mapping):
                geofence = fence.get(cur["terminal_kind"])
    pol = case["policy"]
    policy = (
        (
            f"<p>Policy <code>{esc(pol['policy_id'])}</code> ({esc(pol['applies_because'])}): "
            + ", ".join(
                f"{esc(k)} = <code>{esc(json.dumps(v, ensure_ascii=False))}</code>"
                for k, v in sorted(pol["body"].items())
            )
            + "</p>"
        )
        if pol
        else '<p class="muted">No policy loaded.</p>'
    )
    flag_rows = []
    for f in case["flags"]:
        reasons = "".join(
            f"<li>{esc(r.get('text') if isinstance(r, Mapping) else r)}"
            + (
                f' <span class="muted">(observed {esc(_num(r.get("observed")))}, threshold '
                f"{esc(_num(r.get('threshold')))})</span>"
                if isinstance(r, Mapping)
                else ""
            )
            + "</li>"
            for r in f["reasons"]
        )
        decisions = "".join(
            f"<li>{esc(d['decided_at'])} <b>{esc(d['analyst'])}</b>: {esc(d['decision'])}"
            + (f" until {esc(d['snooze_until'])}" if d["snooze_until"] else "")
            + (f" - {esc(d['note'])}" if d["note"] else "")
            + "</li>"
            for d in f["dispositions"]
        )
        flag_rows.append(
            [
                f"<code>{esc(f['flag_id'])}</code>",
                _sev(f["severity"]),
                f"{f['score']:.2f}",
                f'{esc(f["behaviour"])}<br><span class="muted">{esc(f["category"])}</span>',
                f'<span class="nw">{esc(f["first_seen"])}</span> .. <span class="nw">{esc(f["last_seen"])}</span>',
                esc(f["status"]),
                f'<ul class="reasons">{reasons}</ul>',
                f'<ul class="reasons">{decisions}</ul>',
            ]
        )
    ev_rows = [
        [
            esc(t["txn_id"]),
            esc(t["txn_time"]),
            esc(t["txn_type"]),
            _money(t["amount_minor"]),
            esc(t["card"]),
            esc(f"{t['entry_mode']} {t['entry_mode_name']}"),
            esc(t["mcc"]),
            esc(t["response_code"]),
            "" if t["distance_m"] is None else f"{t['distance_m'] / 1000:.2f}",
            esc(", ".join(t["flag_ids"])),
        ]
        for t in case["evidence_transactions"][:MAX_EVIDENCE_ROWS]
    ]
    codes = [
        (f"{r['response_code']}{' (approved)' if r['response_code'] == '00' else ''}", r["n"])
        for r in case["response_codes"]
    ]
    modes = [(f"{r['entry_mode']} {r['name']}", r["n"]) for r in case["entry_modes"]]
    allowed = (pol["body"] or {}).get("allowed_entry_modes") if pol else None
    bad_modes = [
        f"{r['entry_mode']} {r['name']}"
        for r in case["entry_modes"]
        if allowed is not None and r["entry_mode"] not in allowed
    ]
    charts = (
        '<div class="charts">'
        f'<div class="chart"><h4>Daily volume and approved amount</h4>{svg_daily(case["timeline"])}</div>'
        f'<div class="chart"><h4>Distance of reported locations from the registered address</h4>'
        f"{svg_distance(case['distance_by_day'], geofence)}</div>"
        f'<div class="chart"><h4>Response codes</h4>'
        f"{svg_hbars(codes, highlight=[c for c, _ in codes if not c.startswith('00')])}</div>"
        f'<div class="chart"><h4>Entry modes</h4>{svg_hbars(modes, highlight=bad_modes)}</div>'
        "</div>"
    )
    more = len(case["evidence_transactions"]) - len(ev_rows)
    return (
        f'<article class="case" id="{esc(case_anchor(tid))}" data-terminal-id="{esc(tid)}">'
        f'<a class="back" href="#queue">Back to the queue</a>'
        f"<h2>Case: terminal {esc(tid)}</h2>{facts}{policy}"
        f"<h3>Flags ({len(case['flags'])})</h3>"
        + _table(
            ["flag", "severity", "score", "behaviour", "seen", "status", "why", "decisions"],
            flag_rows,
            num=(2,),
        )
        + f"<h3>Charts</h3>{charts}"
        + f"<h3>Evidence transactions ({len(case['evidence_transactions'])})</h3>"
        + (
            _table(
                [
                    "txn",
                    "time",
                    "type",
                    "amount",
                    "card",
                    "entry mode",
                    "MCC",
                    "response",
                    "km from address",
                    "flags",
                ],
                ev_rows,
                num=(3, 8),
            )
            if ev_rows
            else '<p class="muted">No evidence transactions.</p>'
        )
        + (
            f'<p class="muted">{more} more: <code>trialguard show {esc(tid)}</code></p>'
            if more > 0
            else ""
        )
        + f'<p class="muted">Cards at risk recorded: {esc(case["at_risk_cards"])}. '
        f"Full case file: <code>trialguard show {esc(tid)}</code></p></article>"
    )
