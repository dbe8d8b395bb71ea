"""``trialguard report --date D``: one self-contained HTML file that works offline.

The page holds the night's summary, the review queue (open flags by severity and
score), counts and a 14-day trend per behaviour, the trial-end verdicts, the
data-quality results (with a relative link to the Great Expectations Data Docs)
and one case page per flagged terminal with inline SVG charts.

Safety: every datum goes through :func:`html.escape` (merchant names and reason
texts are untrusted input); the CSS and the small script are inline and pinned
by a Content-Security-Policy hash, so the page loads nothing from anywhere and
no injected script could run. Cards appear as BIN + ``******`` + last 4 at most.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
from datetime import date
from pathlib import Path
from string import Template

import duckdb

from pipelines.analyst.casefile import case_files
from pipelines.analyst.charts import esc
from pipelines.analyst.common import AnalystError, _rows, local_now, open_db
from pipelines.analyst.queue import query_flags
from pipelines.analyst.sections import (
    MAX_CASES,
    MAX_EVIDENCE_ROWS,
    _behaviours,
    _case_page,
    _data_quality,
    _queue,
    _summary,
    _verdicts,
)
from pipelines.settings import Settings

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def render_report(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    settings: Settings,
    out_dir: Path,
    generated_at: str = "",
) -> str:
    """The report's HTML text (see the module doc for what it holds)."""
    queue = [
        f for f in query_flags(con, statuses=("open",), as_of=as_of) if f["first_seen"] <= as_of
    ]
    tonight = _rows(con, "SELECT DISTINCT terminal_id FROM flags WHERE last_seen = ?", [as_of])
    wanted = list(
        dict.fromkeys(
            [f["terminal_id"] for f in queue] + sorted(r["terminal_id"] for r in tonight)
        )
    )
    case_ids = wanted[:MAX_CASES]
    found = case_files(con, case_ids, as_of=as_of, max_evidence=MAX_EVIDENCE_ROWS * 2)
    cases = [found[tid] for tid in case_ids if tid in found]
    case_set = set(case_ids)
    skipped = len(wanted) - len(case_ids)
    overview = (
        _summary(con, as_of, queue)
        + _queue(queue, case_set)
        + _behaviours(con, as_of)
        + _verdicts(con, as_of, case_set)
        + _data_quality(con, as_of, settings, out_dir)
        + (
            f'<p class="muted">{skipped} more flagged terminal(s) have no case page here; use '
            "<code>trialguard show TERMINAL_ID</code>.</p>"
            if skipped
            else ""
        )
    )
    css, js = _template("report.css"), _template("report.js")
    csp = (
        f"default-src 'none'; style-src {_csp_hash(css)}; script-src {_csp_hash(js)}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    return Template(_template("report.html")).substitute(
        csp=csp,
        title=esc(f"TrialGuard report {as_of}"),
        meta=esc(
            f"generated {generated_at} - {settings.timezone} local time"
            if generated_at
            else f"{settings.timezone} local time"
        ),
        css=css,
        js=js,
        overview=overview,
        cases="\n".join(_case_page(c) for c in cases),
    )


def write_report(settings: Settings, as_of: date, out: Path | None = None, con=None) -> Path:
    """Write the offline HTML report for ``as_of`` and return its path.

    Parameters
    ----------
    settings : Settings
        Database, reports folder and time zone.
    as_of : date
        The night reported on.
    out : Path, optional
        Output file (default ``settings.reports_dir / f"trialguard-report-{as_of}.html"``).
    con : duckdb.DuckDBPyConnection, optional
        An open connection to reuse (the nightly flow passes its own); else the
        database is opened read-only and closed again.

    Returns
    -------
    Path
        The file written.
    """
    out = Path(out) if out else settings.reports_dir / f"trialguard-report-{as_of}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    own = con is None
    if own:
        con = open_db(settings)
    try:
        text = render_report(
            con, as_of, settings, out.parent, generated_at=local_now(settings).isoformat(sep=" ")
        )
    finally:
        if own:
            con.close()
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard report``."""
    parser.add_argument(
        "--date", type=date.fromisoformat, required=True, help="the night reported on"
    )
    parser.add_argument("--out", type=Path, help="output HTML file (default: beside the database)")


def main(args: argparse.Namespace, settings: Settings) -> int:
    """``trialguard report``: write the offline HTML report."""
    try:
        path = write_report(settings, args.date, args.out)
    except (AnalystError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
