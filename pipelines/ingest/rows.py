"""What happens to staged rows: card-number-like runs in free text redacted and counted, repeats inside the file and against the store judged duplicates (identical) or conflicts (quarantined), quarantine rows written with file, line and reason (card numbers redacted), accepted rows written."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import duckdb

from features.redaction import (
    CANDIDATE_PATTERN,
    FREE_TEXT_MIN_DIGITS,
    redact_card_numbers,
)
from features.schema import (
    TABLES,
    InputKind,
)
from pipelines.ingest.cards import LUHN_UDF, luhn_valid_arrow, redact_raw_row
from pipelines.ingest.readers import (
    LINE_COLUMN,
    FileInfo,
)
from pipelines.ingest.stage import (
    REDACT_ROW_UDF,
    REDACT_UDF,
    REPEATS,
    STAGE,
    _count,
    _ident,
    _lit,
    _quoted_value,
    content_columns,
)


def _redact_arrow(values: Any, min_digits: int) -> Any:
    """Arrow UDF body: redact Luhn-valid card-number runs; only candidates reach Python."""
    import pyarrow as pa
    import pyarrow.compute as pc

    hits = pc.match_substring_regex(values, CANDIDATE_PATTERN)
    if not pc.any(hits).as_py():
        return values
    out = [
        redact_card_numbers(v, min_digits=min_digits)[0] if hit else v
        for v, hit in zip(values.to_pylist(), hits.to_pylist(), strict=True)
    ]
    return pa.array(out, type=pa.string())


def _redact_free_text(values: Any) -> Any:
    return _redact_arrow(values, FREE_TEXT_MIN_DIGITS)


def register_redaction(con: duckdb.DuckDBPyConnection) -> None:
    """Register the SQL functions :func:`stage_sql` uses to redact card numbers while reading.

    ``_tg_redact(text)`` replaces Luhn-valid 13-19 digit runs (free text);
    ``_tg_redact_row(text)`` replaces 12-19 digit ones (quarantined raw rows);
    ``_tg_luhn(digits)`` is the Luhn check of a card number.
    Registering again on the same connection does nothing.

    Free text is redacted in every row, so its function takes Arrow batches and
    sends only candidate values to Python. The raw-row function only sees invalid
    rows (a few per batch), so it is called per value: as an Arrow function it
    cost ~280 us a batch of a 2,048-row chunk of which typically one row was
    invalid (~1.2 s of CPU, under the GIL, for a 10M-row file).
    """
    have = {
        r[0]
        for r in con.execute(
            "SELECT function_name FROM duckdb_functions() WHERE function_name IN (?, ?, ?)",
            [REDACT_UDF, REDACT_ROW_UDF, LUHN_UDF],
        ).fetchall()
    }
    if REDACT_UDF not in have:
        con.create_function(
            REDACT_UDF, _redact_free_text, ["VARCHAR"], "VARCHAR", type="arrow", side_effects=False
        )
    if REDACT_ROW_UDF not in have:
        con.create_function(
            REDACT_ROW_UDF,
            redact_raw_row,
            ["VARCHAR"],
            "VARCHAR",
            type="native",
            side_effects=False,
        )
    if LUHN_UDF not in have:
        con.create_function(
            LUHN_UDF, luhn_valid_arrow, ["VARCHAR"], "BOOLEAN", type="arrow", side_effects=False
        )


def _update_from_rows(
    con: duckdb.DuckDBPyConnection, column: str, rows: list[tuple[int, str, int]]
) -> None:
    """Set ``column`` of the staging rows given as (line, value, redactions)."""
    if not rows:
        return
    import pyarrow as pa

    table = pa.table(
        {"_l": [r[0] for r in rows], "_v": [r[1] for r in rows], "_n": [r[2] for r in rows]}
    )
    con.register("_tg_updates", table)
    try:
        con.execute(
            f"UPDATE {STAGE} SET {_ident(column)} = u._v, _nred = _nred + u._n "
            f"FROM _tg_updates u WHERE {STAGE}.{LINE_COLUMN} = u._l"
        )
    finally:
        con.unregister("_tg_updates")


def _deduplicate(con: duckdb.DuckDBPyConnection, kind: InputKind, file_id: str) -> None:
    """Mark repeats inside the file and against the store as duplicates or conflicts."""
    keys = list(TABLES[kind.name][1])
    kcols = ", ".join(_ident(k) for k in keys)
    content = ", ".join(_ident(c) for c in content_columns(kind))
    key_words = " and ".join(keys)
    key_value = " || '/' || ".join(f"CAST({_ident(k)} AS VARCHAR)" for k in keys)
    # inside the file: only keys that occur more than once are examined
    con.execute(
        f"CREATE OR REPLACE TABLE {REPEATS} AS "
        f"WITH k AS (SELECT {kcols} FROM {STAGE} WHERE _reason IS NULL "
        f"GROUP BY {kcols} HAVING count(*) > 1), "
        f"s AS (SELECT {LINE_COLUMN}, {kcols}, hash({content}) AS h FROM {STAGE} "
        f"SEMI JOIN k USING ({kcols}) WHERE _reason IS NULL) "
        f"SELECT {LINE_COLUMN}, row_number() OVER w AS rk, first_value({LINE_COLUMN}) OVER w "
        f"AS first_line, h = first_value(h) OVER w AS same FROM s "
        f"WINDOW w AS (PARTITION BY {kcols} ORDER BY {LINE_COLUMN})"
    )
    con.execute(
        f"UPDATE {STAGE} SET _dup = r.same, _reason = CASE WHEN r.same THEN NULL ELSE "
        f"'conflict: {key_words} ' || {_quoted_value(key_value)} || ' repeats line ' || "
        f"r.first_line || ' of this file with different content' END, "
        f"_raw = CASE WHEN r.same THEN NULL ELSE CAST(to_json(struct_pack({content})) AS VARCHAR) END "
        f"FROM {REPEATS} r WHERE {STAGE}.{LINE_COLUMN} = r.{LINE_COLUMN} AND r.rk > 1"
    )
    # against what is stored
    table = kind.name
    on = " AND ".join(f"s.{_ident(k)} = t.{_ident(k)}" for k in keys)
    s_content = ", ".join(f"s.{_ident(c)}" for c in content_columns(kind))
    t_content = ", ".join(f"t.{_ident(c)}" for c in content_columns(kind))
    con.execute(
        f"CREATE OR REPLACE TABLE {REPEATS} AS SELECT s.{LINE_COLUMN}, t.file_id, t.line_no, "
        f"hash({s_content}) = hash({t_content}) AS same FROM {STAGE} s JOIN {table} t ON {on} "
        f"WHERE s._reason IS NULL AND NOT s._dup"
    )
    con.execute(
        f"UPDATE {STAGE} SET _dup = r.same, _reason = CASE WHEN r.same THEN NULL ELSE "
        f"'conflict: {key_words} ' || {_quoted_value(key_value)} || ' is already stored (line ' "
        f"|| r.line_no || ' of file ' || left(r.file_id, 12) || ') with different content' END, "
        f"_raw = CASE WHEN r.same THEN NULL ELSE CAST(to_json(struct_pack({content})) AS VARCHAR) END "
        f"FROM {REPEATS} r WHERE {STAGE}.{LINE_COLUMN} = r.{LINE_COLUMN}"
    )
    con.execute(f"DROP TABLE IF EXISTS {REPEATS}")


def _redact_quarantined(con: duckdb.DuckDBPyConnection) -> None:
    """Redact card-number-like digit runs in the raw rows of invalid staged rows."""
    rows = con.execute(
        f"SELECT {LINE_COLUMN}, _raw FROM {STAGE} WHERE _reason IS NOT NULL AND "
        f"regexp_matches(_raw, '[0-9]([ -]?[0-9]){{11,}}')"
    ).fetchall()
    _update_from_rows(con, "_raw", [(line, redact_raw_row(raw), 0) for line, raw in rows])


def _write_quarantine(
    con: duckdb.DuckDBPyConnection, info: FileInfo, kind: str, now: datetime
) -> int:
    """Copy invalid rows (redacted by :func:`_redact_quarantined`) to ``quarantine``."""
    return _count(
        con,
        f"INSERT INTO quarantine SELECT ?, ?, ?, {LINE_COLUMN}, _reason, _raw, ? "
        f"FROM {STAGE} WHERE _reason IS NOT NULL",
        [info.file_id, str(info.path), kind, now],
    )


def _write_accepted(con: duckdb.DuckDBPyConnection, kind: InputKind, file_id: str) -> int:
    cols = [c.name for c in TABLES[kind.name][0]]
    select = ", ".join(
        "?" if c == "file_id" else LINE_COLUMN if c == "line_no" else _ident(c) for c in cols
    )
    dup = " AND NOT _dup" if TABLES[kind.name][1] else ""
    # rows carry their file and line: the store need not keep the file's order, and
    # each thread appending its own row groups saved ~15% of the insert's time
    with _setting(con, "preserve_insertion_order", "false"):
        return _count(
            con,
            f"INSERT INTO {kind.name} ({', '.join(_ident(c) for c in cols)}) "
            f"SELECT {select} FROM {STAGE} WHERE _reason IS NULL{dup}",
            [file_id],
        )


@contextlib.contextmanager
def _setting(con: duckdb.DuckDBPyConnection, name: str, value: str) -> Iterator[None]:
    """Set a DuckDB setting of ``con`` for the ``with`` block; restore it afterwards."""
    previous = con.execute("SELECT current_setting(?)", [name]).fetchone()[0]
    if isinstance(previous, bool):
        previous = str(previous).lower()
    con.execute(f"SET {name} = {_lit(value)}")
    try:
        yield
    finally:
        con.execute(f"SET {name} = {_lit(str(previous))}")
