"""What every analyst command shares: opening the store, card masking, formula-safe CSV and JSON.

Card numbers are shown as BIN + ``******`` + last 4 at most (PCI DSS 3.4.1);
``card_token`` is never shown. CSV cells that a spreadsheet would read as a
formula are prefixed with a quote (OWASP CSV injection).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from pipelines.settings import Settings
from pipelines.storage import connect

#: Characters that make a spreadsheet read a cell as a formula (OWASP CSV injection),
#: including their full-width forms, which some spreadsheets also honour.
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r", "\n", "＝", "＋", "－", "＠")


MASK = "******"


class AnalystError(ValueError):
    """A command's input does not fit the data (unknown flag, bad decision ...)."""


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
