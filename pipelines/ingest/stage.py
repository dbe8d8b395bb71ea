"""The staging SQL, generated from :mod:`features.schema`: every input column read as text, trimmed and cast by the schema per value, patterns checked, card numbers tokenised inside DuckDB, and the reason of every invalid row written in words."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb

from features.schema import (
    FRAUD_REPORTS,
    PAN_REDACTION_MARKER,
    TABLES,
    TERMINAL_EVENTS,
    TERMINALS,
    TRANSACTIONS,
    Column,
    InputKind,
)
from pipelines.ingest.cards import (
    LUHN_UDF,
    mask_pan_sql,
    pan_digits_sql,
    redact_sql,
    token_sql,
)
from pipelines.ingest.readers import (
    LINE_COLUMN,
    SOURCE_VIEW,
)

#: The staging database: a scratch DuckDB file beside the store, attached under this
#: name while ingesting and deleted afterwards (see :func:`attach_staging`).
STAGING = "tg_staging"


STAGE = f"{STAGING}._tg_stage"


REPEATS = f"{STAGING}._tg_rep"


REDACT_UDF = "_tg_redact"


REDACT_ROW_UDF = "_tg_redact_row"


_TS_RE = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,9})?)?)?"
    r" ?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?"
)


_OFFSET_RE = r"[0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,9})?)? ?(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _raw(name: str) -> str:
    return _ident("r__" + name)


def _quoted_value(raw_sql: str) -> str:
    """A value as quoted in a reason: long digit runs redacted, at most 40 characters."""
    return f"'''' || left({redact_sql(raw_sql)}, 40) || ''''"


def _typed_sql(col: Column, raw: str, tz: str) -> str:
    if col.dtype == "int":
        return f"CASE WHEN regexp_full_match({raw}, '[+-]?[0-9]{{1,18}}') THEN CAST({raw} AS BIGINT) END"
    if col.dtype == "float":
        return f"CASE WHEN isfinite(TRY_CAST({raw} AS DOUBLE)) THEN TRY_CAST({raw} AS DOUBLE) END"
    if col.dtype == "bool":
        return f"CASE {raw} WHEN 'true' THEN true WHEN 'false' THEN false END"
    if col.dtype == "date":
        return (
            f"CASE WHEN regexp_full_match({raw}, '[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}') "
            f"THEN TRY_CAST({raw} AS DATE) END"
        )
    if col.dtype == "ts":
        return (
            f"CASE WHEN NOT regexp_full_match({raw}, '{_TS_RE}') THEN NULL "
            f"WHEN regexp_matches({raw}, '{_OFFSET_RE}') "
            f"THEN timezone({_lit(tz)}, TRY_CAST({raw} AS TIMESTAMPTZ)) "
            f"ELSE TRY_CAST({raw} AS TIMESTAMP) END"
        )
    return raw


def _trimmed_sql(value: str) -> str:
    """``NULLIF(TRIM(value), '')``, with ``TRIM`` only where it can change the value.

    DuckDB's ``TRIM`` strips spaces, including Unicode ones (U+00A0, U+3000), and no
    other ASCII character. A pure-ASCII value (byte length = character length)
    that neither starts nor ends with a space is therefore unchanged by it; the
    test costs ~16 ns a value against ~60 ns for ``TRIM`` (~20 columns x 10M rows).
    """
    return (
        f"CASE WHEN {value} LIKE ' %' OR {value} LIKE '% ' OR strlen({value}) <> "
        f"length({value}) THEN NULLIF(TRIM({value}), '') ELSE NULLIF({value}, '') END"
    )


_TYPE_WORDS = {
    "int": "a whole number",
    "float": "a finite number",
    "bool": "true or false",
    "date": "a date YYYY-MM-DD",
    "ts": "an ISO 8601 timestamp",
}


def stage_sql(
    kind: InputKind,
    names: Sequence[str],
    tz: str,
    has_key: bool,
    numbered: Callable[[str], str] | None = None,
) -> str:
    """The statement that creates the staging table of one file.

    Every contract column gets its typed value, ``pan`` becomes ``card_token``
    (+ ``card_bin``, ``card_last4``), unknown columns go to ``extra`` as JSON,
    ``_reason`` says in words why a row is invalid (``NULL`` when valid) and
    ``_raw`` keeps an invalid row as read, with ``pan`` masked.

    Card numbers are tokenised, masked and redacted in the first projection
    over the reader (``c0``); line numbering (``numbered(relation)``, see
    :func:`pipelines.ingest.readers.line_numbering`) comes after it, so no operator
    that may buffer its input ever holds a raw PAN. Without ``numbered`` the
    source view must already have ``_line``.
    """
    present = set(names)
    contract = set(kind.names)
    extras = [n for n in names if n not in contract]
    cols_by_name = {c.name: c for c in kind.columns}

    def is_free(name: str) -> bool:
        col = cols_by_name.get(name)
        return col is None or col.free_text

    def raw_expr(name: str) -> str:
        if name not in present:
            return "CAST(NULL AS VARCHAR)"
        if is_free(name):
            # card numbers in free text are redacted as the file is read: no table
            # (in memory or spilled to disk) ever holds them
            return f"{REDACT_UDF}(NULLIF({_ident(name)}, ''))"
        return _trimmed_sql(_ident(name))

    has_pan = "pan" in kind.names
    clean = [f"{raw_expr(n)} AS {_raw(n)}" for n in [*kind.names, *extras] if n != "pan"]
    carried = [_raw(n) for n in [*kind.names, *extras]]
    if has_pan:
        written = _trimmed_sql(_ident("pan")) if "pan" in present else "CAST(NULL AS VARCHAR)"
        # the digits of the PAN as people write it (spaces or dashes between groups):
        # the token is the HMAC of the digits, so every spelling of a card matches
        p = pan_digits_sql(written)
        size = f"coalesce(regexp_full_match({p}, '[0-9]{{12,19}}'), false)"
        ok = f"({size} AND {LUHN_UDF}({p}))"
        clean += [
            f"{mask_pan_sql(f'coalesce({p}, {written})')} AS {_raw('pan')}",
            f"{ok} AS _pan_ok",
            f"{size} AS _pan_size_ok",
            f"CASE WHEN {size} THEN left({p}, 6) || '...' || right({p}, 4) END AS _pan_shown",
            f"CASE WHEN {ok} THEN {token_sql(p)} END AS _pan_token",
            f"CASE WHEN {ok} THEN left({p}, 6) END AS _pan_bin",
            f"CASE WHEN {ok} THEN right({p}, 4) END AS _pan_last4",
        ]
        carried += [
            "_pan_ok",
            "_pan_size_ok",
            "_pan_shown",
            "_pan_token",
            "_pan_bin",
            "_pan_last4",
        ]
    free_present = [n for n in names if is_free(n)]
    marks0 = " + ".join(_marker_count(_ident(n)) for n in free_present) or "0"
    nred = " + ".join(_marker_count(_raw(n)) for n in free_present) + " - _marks0" or "0"
    if not free_present:
        nred = "0"

    typed: dict[str, str] = {}
    for col in kind.columns:
        if col.name == "pan":
            continue
        typed[col.name] = _typed_sql(col, _raw(col.name), tz)
    if has_pan:
        typed["card_token"] = f"CASE WHEN _pan_ok THEN _pan_token ELSE {_raw('card_token')} END"
        typed["card_bin"] = f"CASE WHEN _pan_ok THEN _pan_bin ELSE {_raw('card_bin')} END"
        typed["card_last4"] = f"CASE WHEN _pan_ok THEN _pan_last4 ELSE {_raw('card_last4')} END"
    if kind is TRANSACTIONS:
        typed["local_date"] = f"CAST(({typed['txn_time']}) AS DATE)"
    if kind is TERMINAL_EVENTS:
        typed["event_id"] = "CAST(NULL AS VARCHAR)"  # derived after free-text redaction
    typed["extra"] = (
        "json_object(" + ", ".join(f"{_lit(n)}, {_raw(n)}" for n in extras) + ")"
        if extras
        else "CAST(NULL AS JSON)"
    )

    reasons: list[str] = []
    patterned: list[tuple[str, str]] = []  # (value, pattern) of every pattern check
    one_of = {c for group in kind.one_of for c in group}
    derived = {"card_bin", "card_last4"} if has_pan else set()
    for col in kind.columns:
        r, t = _raw(col.name), _ident(col.name)
        if col.required and col.name not in one_of:
            reasons.append(f"CASE WHEN {r} IS NULL THEN '{col.name} is missing (required)' END")
        if col.name == "pan":
            reasons.append(
                f"CASE WHEN {r} IS NOT NULL AND NOT _pan_size_ok "
                "THEN 'pan is not 12-19 digits (value withheld); expected the card number "
                "as digits, optionally grouped by single spaces or dashes' "
                f"WHEN {r} IS NOT NULL AND NOT _pan_ok "
                "THEN 'pan ' || _pan_shown || ' fails the Luhn check (only BIN and last 4 "
                "shown); expected a valid card number: check the file for a typing or "
                "export error' END"
            )
            continue
        if col.dtype in _TYPE_WORDS:
            reasons.append(
                f"CASE WHEN {r} IS NOT NULL AND {t} IS NULL THEN '{col.name} ' || "
                f"{_quoted_value(r)} || ' is not {_TYPE_WORDS[col.dtype]}' END"
            )
        if col.pattern and col.dtype == "str":
            subject = t if col.name in derived else r
            patterned.append((typed[col.name] if col.name in derived else r, col.pattern))
            # only rows failing the one combined match (rare) run the per-column match
            reasons.append(
                f"CASE WHEN _pats_ok THEN NULL WHEN {subject} IS NOT NULL AND NOT "
                f"regexp_full_match({subject}, {_lit(col.pattern)}) THEN '{col.name} ' || "
                f"{_quoted_value(subject)} || ' does not have the expected format "
                f"{col.pattern}' END"
            )
        if col.allowed:
            listed = ", ".join(_lit(a) for a in col.allowed)
            reasons.append(
                f"CASE WHEN {r} IS NOT NULL AND {r} NOT IN ({listed}) THEN '{col.name} ' || "
                f"{_quoted_value(r)} || ' is not one of {', '.join(col.allowed)}' END"
            )
        if col.min_value is not None and col.dtype in ("int", "float"):
            reasons.append(
                f"CASE WHEN {t} < {col.min_value!r} THEN '{col.name} ' || {_quoted_value(r)} || "
                f"' is below the minimum {col.min_value:g}' END"
            )
        if col.max_value is not None and col.dtype in ("int", "float"):
            reasons.append(
                f"CASE WHEN {t} > {col.max_value!r} THEN '{col.name} ' || {_quoted_value(r)} || "
                f"' is above the maximum {col.max_value:g}' END"
            )
    for group in kind.one_of:
        cond = " AND ".join(f"{_raw(c)} IS NULL" for c in group)
        reasons.append(
            f"CASE WHEN {cond} THEN 'neither {' nor '.join(group)} is given (one is required)' END"
        )
    if has_pan:
        reasons.append(
            f"CASE WHEN {_raw('pan')} IS NULL AND {_raw('card_token')} IS NOT NULL AND "
            f"({_raw('card_bin')} IS NULL OR {_raw('card_last4')} IS NULL) THEN 'card_token is "
            "given without card_bin and card_last4 (both are required with card_token)' END"
        )
    if kind is FRAUD_REPORTS:
        reasons.append(
            "CASE WHEN reported_at < fraud_time THEN 'reported_at is before fraud_time' END"
        )
    if kind is TERMINALS:
        reasons.append(
            "CASE WHEN trial_end < trial_start THEN 'trial_end is before trial_start' END"
        )

    raw_fields = []
    for n in names:
        raw_fields.append(f"{_lit(n)}, {_raw(n)}")  # pan is masked already
    raw_json = "json_object(" + ", ".join(raw_fields) + ")"

    stored = [c.name for c in TABLES[kind.name][0] if c.name not in ("file_id", "line_no")]
    typed_select = ", ".join(f"{typed[n]} AS {_ident(n)}" for n in stored)
    typed_select += f", {_patterns_ok_sql(patterned)} AS _pats_ok"
    reason = "NULLIF(concat_ws('; ', " + ", ".join(reasons) + "), '')"
    key_flag = ", false AS _dup" if has_key else ""
    # c0 is the only relation that sees raw card numbers (pan, free text); it is
    # streamed from the reader, never stored: the staging table holds tokens,
    # masked and redacted values only
    excluded = ", ".join(_ident(n) for n in names)
    c0 = f"SELECT * EXCLUDE ({excluded}), {', '.join(clean)}, {marks0} AS _marks0 FROM {SOURCE_VIEW}"
    cn = numbered("c0") if numbered is not None else "SELECT * FROM c0"
    return (
        f"CREATE OR REPLACE TABLE {STAGE} AS "
        f"WITH c0 AS ({c0}), cn AS ({cn}), "
        f"c AS (SELECT {LINE_COLUMN}, {', '.join(carried)}, {nred} AS _nred FROM cn), "
        f"t AS (SELECT c.*, {typed_select} FROM c), "
        f"v AS (SELECT t.*, {reason} AS _reason FROM t) "
        f"SELECT {LINE_COLUMN}, {', '.join(_ident(n) for n in stored)}, _reason, "
        f"CASE WHEN _reason IS NOT NULL THEN {REDACT_ROW_UDF}(CAST({raw_json} AS VARCHAR)) END "
        f"AS _raw, _nred{key_flag} FROM v"
    )


def _patterns_ok_sql(patterned: Sequence[tuple[str, str]]) -> str:
    """One regular-expression match saying every (value, pattern) pair is null or matches.

    The values are joined with a unit separator (U+001F) and matched against the
    patterns joined the same way, each optional (a null value is empty). None of
    the patterns admits U+001F, so a value containing one cannot shift the match
    onto its neighbour: the whole match fails and the per-column checks decide.
    One match per row instead of one per patterned column (each ~90 ns, mostly
    call overhead on short values).
    """
    if not patterned:
        return "true"
    for _, pattern in patterned:
        bare = pattern.replace("\\.", "")
        if "." in bare or "[^" in bare or any(e in bare for e in ("\\s", "\\S", "\\W", "\\D")):
            raise ValueError(
                f"column pattern {pattern!r} may admit U+001F, the separator of the combined "
                "format check; write it with explicit character classes (e.g. [0-9A-Z])"
            )
    joined = "concat(" + ", chr(31), ".join(f"coalesce({v}, '')" for v, _ in patterned) + ")"
    pattern = "\\x1f".join(f"(?:{pat})?" for _, pat in patterned)
    return f"regexp_full_match({joined}, {_lit(pattern)})"


def _marker_count(sql: str) -> str:
    m = _lit(PAN_REDACTION_MARKER)
    return f"((length(coalesce({sql}, '')) - length(replace(coalesce({sql}, ''), {m}, ''))) // {len(PAN_REDACTION_MARKER)})"


def content_columns(kind: InputKind) -> list[str]:
    """Stored columns that define a row's content (compared to tell duplicates from conflicts)."""
    skip = {"extra", "file_id", "line_no"}
    return [c.name for c in TABLES[kind.name][0] if c.name not in skip]


def free_text_columns(kind: InputKind) -> list[str]:
    """Columns scanned for card numbers: the free-text ones and ``extra``."""
    return [c.name for c in kind.columns if c.free_text] + ["extra"]


EVENT_ID_SQL = "sha1(concat_ws('|', {}))".format(
    ", ".join(f"coalesce(CAST({_ident(c.name)} AS VARCHAR), '')" for c in TERMINAL_EVENTS.columns)
)


def _count(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> int:
    # fetchall completes the result (DuckDB 2 refuses new work while one is pending)
    cur = con.execute(sql, params) if params is not None else con.execute(sql)
    rows = cur.fetchall()
    return int(rows[0][0] or 0) if rows else 0


def attach_staging(con: duckdb.DuckDBPyConnection, db_path: str | Path) -> Path:
    """Attach the scratch database that files are staged in (idempotent); return its path.

    It is a DuckDB file beside the store (``.<store name>.staging``), so it has the
    store's protection; it holds what the store holds (tokens, BIN and last 4,
    masked and redacted raw rows), never a raw card number. A file left by a
    killed run is deleted first. Staging there instead of in the store keeps the
    store's file from growing by each staged copy, and lets the store's transaction
    hold only the file's final writes.
    """
    path = Path(db_path)
    path = path.with_name(f".{path.name}.staging")
    attached = _count(
        con, "SELECT count(*) FROM duckdb_databases() WHERE database_name = ?", [STAGING]
    )
    if not attached:
        for p in (path, Path(str(path) + ".wal")):
            p.unlink(missing_ok=True)
        con.execute(f"ATTACH {_lit(str(path))} AS {STAGING}")
    return path


def detach_staging(con: duckdb.DuckDBPyConnection, db_path: str | Path) -> None:
    """Detach the scratch database and delete its file."""
    path = Path(db_path)
    path = path.with_name(f".{path.name}.staging")
    if _count(con, "SELECT count(*) FROM duckdb_databases() WHERE database_name = ?", [STAGING]):
        con.execute(f"DETACH {STAGING}")
    for p in (path, Path(str(path) + ".wal")):
        p.unlink(missing_ok=True)


def _drop_staged(con: duckdb.DuckDBPyConnection) -> None:
    """Drop the staged tables of a file (after its transaction ended)."""
    for table in (STAGE, REPEATS):
        con.execute(f"DROP TABLE IF EXISTS {table}")


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back the file's transaction if it was begun."""
    try:
        con.execute("ROLLBACK")
    except duckdb.TransactionException:
        pass  # the error came before the file's transaction began
