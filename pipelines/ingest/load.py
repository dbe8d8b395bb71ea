"""``trialguard ingest``: load trial files into the store, accepting or quarantining every row.

One file at a time, each in one DuckDB transaction (see ``docs/ingest.md``):

1. read: :mod:`pipelines.ingest.readers` hashes the file, recognises format and
   encoding, and exposes it as a view of text columns with line numbers;
2. stage: one SQL statement generated from :mod:`features.schema` casts every
   column, tokenises ``pan`` inside DuckDB (:mod:`pipelines.ingest.cards`) and writes
   the reason of every invalid row, in words;
3. redact: card-number-like runs in free text are replaced and counted;
4. de-duplicate: repeats of a key inside the file and against the store are
   duplicates (identical) or conflicts (quarantined);
5. write: accepted rows, quarantine, the Great Expectations gate and the
   manifest row, then ``COMMIT``.

For every file, rows read = accepted + quarantined + duplicates.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from features.redaction import (
    CANDIDATE_PATTERN,
    FREE_TEXT_MIN_DIGITS,
    redact_card_numbers,
)
from features.schema import (
    CARD_TYPES,
    DEFAULT_POLICY_ID,
    ENTRY_MODES,
    FRAUD_REPORTS,
    INPUT_KINDS,
    PAN_REDACTION_MARKER,
    POLICIES_KIND,
    POLICY_KEYS,
    TABLES,
    TERMINAL_EVENTS,
    TERMINAL_KINDS,
    TERMINALS,
    TRANSACTIONS,
    TXN_TYPES,
    Column,
    InputKind,
)
from pipelines.ingest.cards import (
    hmac_pads,
    mask_pan_sql,
    redact_raw_row,
    redact_sql,
    safe_message,
    token_sql,
)
from pipelines.ingest.readers import (
    LINE_COLUMN,
    SOURCE_VIEW,
    FileInfo,
    LineNumbering,
    UnreadableFile,
    close_source,
    guess_csv,
    line_numbering,
    open_source,
    register_line_starts,
    sniff,
)
from pipelines.settings import PROJECT_ROOT, Settings

DEFAULT_POLICIES_FILE = PROJECT_ROOT / "pipelines" / "default_policies.toml"
#: The staging database: a scratch DuckDB file beside the store, attached under this
#: name while ingesting and deleted afterwards (see :func:`attach_staging`).
STAGING = "tg_staging"
STAGE = f"{STAGING}._tg_stage"
REPEATS = f"{STAGING}._tg_rep"
REDACT_UDF = "_tg_redact"
REDACT_ROW_UDF = "_tg_redact_row"
#: DuckDB memory limit while ingesting (``TRIALGUARD_INGEST_MEMORY_LIMIT`` overrides it).
#: Nothing spills (``temp_directory = ''``); the staging table's blocks beyond it are
#: evicted to the scratch database file. 2GB: a 10M-row file peaks at 2.6 GiB RSS
#: (3.6 GiB with 3GB, same time).
INGEST_MEMORY_LIMIT = "2GB"
#: Rows handed to the Great Expectations gate per file (about; chosen by a hash of the line).
GATE_SAMPLE_ROWS = 100_000
#: Order in which a folder's files are ingested (policies, registry, then the rest).
KIND_ORDER = {POLICIES_KIND: 0, "terminals": 1, "transactions": 2, "terminal_events": 3}
_TS_RE = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,9})?)?)?"
    r" ?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?"
)
_OFFSET_RE = r"[0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,9})?)? ?(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass
class FileResult:
    """The outcome of one file: status, accounting and timings.

    ``status`` is ``loaded``, ``rejected`` (recorded in the manifest with
    ``message``) or ``skipped`` (its content hash was loaded before).
    """

    path: str
    status: str
    file_id: str | None = None
    kind: str | None = None
    format: str | None = None
    encoding: str | None = None
    rows_read: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    pan_redactions: int = 0
    gate_success: bool | None = None
    message: str = ""
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        """Whether rows read = accepted + quarantined + duplicates."""
        return self.rows_read == self.accepted + self.quarantined + self.duplicates


@dataclass
class IngestReport:
    """What one ingest call did, file by file.

    ``ok`` is false when a file was rejected or a quality gate failed; the
    command then exits with status 1.
    """

    run_id: str
    files: list[FileResult]
    seconds: float = 0.0

    @property
    def totals(self) -> dict[str, int]:
        """Summed counts over all files, and the number of files per status."""
        out = {"files": len(self.files)}
        for status in ("loaded", "rejected", "skipped"):
            out[f"files_{status}"] = sum(f.status == status for f in self.files)
        for name in ("rows_read", "accepted", "quarantined", "duplicates", "pan_redactions"):
            out[name] = sum(getattr(f, name) for f in self.files)
        out["gates_failed"] = sum(f.gate_success is False for f in self.files)
        return out

    @property
    def ok(self) -> bool:
        """No rejected file and no failed gate."""
        t = self.totals
        return t["files_rejected"] == 0 and t["gates_failed"] == 0


# ---------------------------------------------------------------------------
# Files and kinds
# ---------------------------------------------------------------------------


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus every file under the named folders (recursively).

    Hidden files (``.name``) inside folders are skipped; a path that does not
    exist raises ``FileNotFoundError``.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist; pass existing files or folders")
    seen: set[Path] = set()
    unique = []
    for f in out:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def recognise_kind(names: Sequence[str], kind: str | None = None) -> str:
    """The input kind of a file from its column names (or check the one given).

    Raises
    ------
    UnreadableFile
        The given kind's required columns are missing, or no kind matches.

    Examples
    --------
    >>> recognise_kind(["report_id", "pan", "fraud_time", "reported_at", "fraud_type"])
    'fraud_reports'
    """
    have = set(names)

    def missing(k: InputKind) -> list[str]:
        miss = [c for c in k.required if c not in have]
        for group in k.one_of:
            if not have & set(group):
                miss.append(" or ".join(group))
        return miss

    if kind is not None:
        if kind not in INPUT_KINDS:
            raise UnreadableFile(
                f"unknown kind {kind!r}; expected one of {', '.join(INPUT_KINDS)} "
                "(policies are recognised from the .toml extension)"
            )
        miss = missing(INPUT_KINDS[kind])
        if miss:
            raise UnreadableFile(
                f"missing required column(s) for {kind}: {', '.join(miss)}; "
                "add them or check --kind"
            )
        return kind
    complete = [k for k in INPUT_KINDS.values() if not missing(k)]
    if complete:
        return max(complete, key=lambda k: len(have & set(k.names))).name
    best = max(INPUT_KINDS.values(), key=lambda k: len(have & set(k.names)))
    if not have & set(best.names):
        raise UnreadableFile(
            f"the columns ({', '.join(list(names)[:8])}) match no input kind; expected the "
            f"header of one of {', '.join(INPUT_KINDS)} (see docs/data-contract.md)"
        )
    raise UnreadableFile(
        f"looks like {best.name} but is missing required column(s): "
        f"{', '.join(missing(best))}; add them or pass --kind"
    )


def _peek_kind(path: Path, kind: str | None) -> tuple[int, str]:
    """Cheap ordering key: policies, terminals, transactions, events, reports, then name."""
    from pipelines.ingest.readers import claimed_format

    fmt, _ = claimed_format(path)
    if fmt == "toml":
        return (KIND_ORDER[POLICIES_KIND], path.name)
    guess = kind
    if guess is None:
        try:
            names = _header_names(path)
            guess = recognise_kind(names)
        except Exception:  # noqa: BLE001 - ordering only; the real read reports errors
            guess = None
    return (KIND_ORDER.get(guess or "", 4), path.name)


def _header_names(path: Path) -> list[str]:
    import csv
    import gzip
    import io

    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PAR1"):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    opener = gzip.open if head.startswith(b"\x1f\x8b") else open
    with opener(path, "rb") as fh:
        raw = fh.read(65536)
    for enc in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    else:
        return []
    first = text.lstrip()
    if first.startswith("{"):
        return list(json.loads(first.splitlines()[0]).keys())
    return next(csv.reader(io.StringIO(text)), [])


def order_files(paths: Sequence[Path], kind: str | None = None) -> list[Path]:
    """Policies first, then the terminal registry, then the rest, each sorted by name."""
    keyed = [(_peek_kind(p, kind), str(p), p) for p in paths]
    return [p for _, _, p in sorted(keyed)]


# ---------------------------------------------------------------------------
# SQL generated from the schema
# ---------------------------------------------------------------------------


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
        p = _trimmed_sql(_ident("pan")) if "pan" in present else "CAST(NULL AS VARCHAR)"
        ok = f"({p} IS NOT NULL AND regexp_full_match({p}, '[0-9]{{12,19}}'))"
        clean += [
            f"{mask_pan_sql(p)} AS {_raw('pan')}",
            f"{ok} AS _pan_ok",
            f"CASE WHEN {ok} THEN {token_sql(p)} END AS _pan_token",
            f"CASE WHEN {ok} THEN left({p}, 6) END AS _pan_bin",
            f"CASE WHEN {ok} THEN right({p}, 4) END AS _pan_last4",
        ]
        carried += ["_pan_ok", "_pan_token", "_pan_bin", "_pan_last4"]
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
                f"CASE WHEN {r} IS NOT NULL AND NOT _pan_ok "
                "THEN 'pan is not 12-19 digits (value withheld); expected the card number "
                "digits only' END"
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
    ``_tg_redact_row(text)`` replaces 12-19 digit ones (quarantined raw rows).
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
            "SELECT function_name FROM duckdb_functions() WHERE function_name IN (?, ?)",
            [REDACT_UDF, REDACT_ROW_UDF],
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


# ---------------------------------------------------------------------------
# One file
# ---------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = self.stages.get(name, 0.0) + now - self._t
        self._t = now


def _count(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> int:
    # fetchall completes the result (DuckDB 2 refuses new work while one is pending)
    cur = con.execute(sql, params) if params is not None else con.execute(sql)
    rows = cur.fetchall()
    return int(rows[0][0] or 0) if rows else 0


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


def _gate_sample(con: duckdb.DuckDBPyConnection, kind: InputKind) -> Any:
    """The sample of a file's accepted rows that the gate validates (Arrow).

    About ``GATE_SAMPLE_ROWS`` rows chosen by a hash of their line number: the
    same rows on every run, spread over the whole file, and cheap to take (the
    filter reads the line numbers, the other columns only for the rows it keeps;
    a reservoir sample read every column of every row: 4-5 s on 10M rows vs 0.6 s).
    """
    dup = " AND NOT _dup" if TABLES[kind.name][1] else ""
    cols = ", ".join(_ident(c) for c in content_columns(kind))
    rows = _count(con, f"SELECT count(*) FROM {STAGE}")
    every = max(rows // GATE_SAMPLE_ROWS, 1)
    return con.sql(
        f"SELECT {cols} FROM {STAGE} WHERE hash({LINE_COLUMN}) % {every} = 0 "
        f"AND _reason IS NULL{dup}"
    ).to_arrow_table()


def _start_gate(
    con: duckdb.DuckDBPyConnection, kind: InputKind, file_id: str, gate: Any
) -> concurrent.futures.Future | None:
    """Validate (a sample of) the file's accepted rows in a background thread.

    The sample is taken on ``con`` here; the Great Expectations suite then runs in
    a thread that never touches DuckDB, while the caller writes the accepted rows
    (DuckDB releases the GIL), so the gate's Python work overlaps the insert.
    """
    if gate is None:
        return None
    import polars as pl

    frame = pl.from_arrow(_gate_sample(con, kind))
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="trialguard-gate")
    try:
        return pool.submit(gate.validate, kind.name, frame, file_id)
    finally:
        pool.shutdown(wait=False)


def _finish_gate(
    con: duckdb.DuckDBPyConnection,
    kind: InputKind,
    file_id: str,
    pending: concurrent.futures.Future | None,
    now: datetime,
) -> bool | None:
    """Wait for the gate started by :func:`_start_gate` and record its result."""
    if pending is None:
        return None
    result = pending.result()
    con.execute(
        "INSERT INTO gate_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            file_id,
            kind.name,
            result.suite,
            result.success,
            result.evaluated,
            result.failed,
            json.dumps(result.details),
            result.docs_path,
            now,
        ],
    )
    return result.success


def _manifest(
    con: duckdb.DuckDBPyConnection, r: FileResult, started: datetime, finished: datetime
) -> None:
    con.execute(
        "INSERT INTO ingest_manifest VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            r.file_id,
            r.path,
            r.kind,
            r.format,
            r.encoding,
            r.status,
            r.rows_read,
            r.accepted,
            r.quarantined,
            r.duplicates,
            r.pan_redactions,
            r.gate_success,
            r.message,
            started,
            finished,
        ],
    )


def _pause_for_tests(name: str, stage: str) -> None:
    """Hold here when ``TRIALGUARD_INGEST_PAUSE`` is ``<file name>:<stage>``.

    Only the kill-and-rerun test sets it, to kill a process mid-file
    deterministically (rows written, transaction not committed).
    """
    if os.environ.get("TRIALGUARD_INGEST_PAUSE") == f"{name}:{stage}":
        print(f"ingest paused at {name}:{stage}", file=sys.stderr, flush=True)
        time.sleep(600)


def _load_table_file(
    con: duckdb.DuckDBPyConnection,
    info: FileInfo,
    result: FileResult,
    kind_name: str | None,
    pads: tuple[bytes, bytes],
    tz: str,
    gate: Any,
    clock: _Clock,
    staged: LineNumbering | None = None,
) -> None:
    """Stage, check and de-duplicate one table file, then open the file's transaction and write.

    ``staged`` is the line numbering of rows :func:`ingest_file` already staged from
    a guess of the file's format that ``info`` confirmed; ``None`` stages them here.

    Staging happens in the scratch database (:func:`attach_staging`), each statement
    committed there on its own: nothing of the store changes until the file's
    transaction, which this function begins (``BEGIN``) before writing quarantine,
    accepted rows and gate results into the store. The caller writes the manifest
    row and commits (or rolls back) that transaction.
    """
    if staged is None:
        _stage_rows(con, info, result, kind_name, pads, tz, clock, number=True)
    else:
        _number_rows(con, info, staged)
    _check_staged(con, info, result)
    clock.lap("dedup")
    kind = INPUT_KINDS[result.kind]
    has_key = bool(TABLES[kind.name][1])
    pending = _start_gate(con, kind, info.file_id, gate)
    try:
        con.execute("BEGIN TRANSACTION")
        now = datetime.now()
        result.quarantined = _write_quarantine(con, info, kind.name, now)
        clock.lap("quarantine")
        result.accepted = _write_accepted(con, kind, info.file_id)
        _pause_for_tests(info.path.name, "write")
        dup = " AND NOT _dup" if has_key else ""
        result.pan_redactions = _count(
            con, f"SELECT sum(_nred) FROM {STAGE} WHERE _reason IS NULL{dup}"
        )
        clock.lap("write")  # the gate ran alongside; "gate" is the wait after the write
    finally:
        # wait for the gate thread in any case (never leave it running on an error)
        concurrent.futures.wait([pending] if pending is not None else [])
    result.gate_success = _finish_gate(con, kind, info.file_id, pending, now)
    clock.lap("gate")
    if not result.balanced:  # pragma: no cover - a bug, never a data problem
        raise RuntimeError(
            f"accounting mismatch for {info.path.name}: read {result.rows_read} != accepted "
            f"{result.accepted} + quarantined {result.quarantined} + duplicates "
            f"{result.duplicates}"
        )


def _stage_rows(
    con: duckdb.DuckDBPyConnection,
    info: FileInfo,
    result: FileResult,
    kind_name: str | None,
    pads: tuple[bytes, bytes],
    tz: str,
    clock: _Clock,
    number: bool,
) -> LineNumbering:
    """Read and check one file into the staging table; number its rows if ``number``.

    Returns the line numbering, which :func:`_number_rows` applies later when
    ``number`` is false (rows staged from a guess of the file's format).
    """
    # the staged copy lives for seconds: compressing it cost about a third of the
    # staging CPU for nothing (the accepted rows are compressed once, in the store)
    with _setting(con, "force_compression", "uncompressed"):
        names = open_source(con, info)
        try:
            return _stage_query(con, info, result, kind_name, names, pads, tz, clock, number)
        finally:
            close_source(con)


def _stage_query(
    con: duckdb.DuckDBPyConnection,
    info: FileInfo,
    result: FileResult,
    kind_name: str | None,
    names: list[str],
    pads: tuple[bytes, bytes],
    tz: str,
    clock: _Clock,
    number: bool,
) -> LineNumbering:
    """Run the staging statement of an open source (see :func:`_stage_rows`)."""
    kind = INPUT_KINDS[recognise_kind(names, kind_name)]
    result.kind = kind.name
    clock.lap("read")
    has_key = bool(TABLES[kind.name][1])
    numbering = line_numbering(con, info, STAGE)
    sql = stage_sql(kind, names, tz, has_key, numbering.select)
    register_redaction(con)
    params = {"ipad": pads[0], "opad": pads[1]} if "$ipad" in sql else None
    try:
        con.execute(sql, params) if params else con.execute(sql)
    except duckdb.OutOfMemoryException:
        raise UnreadableFile(
            f"{info.path.name} does not fit in the ingest memory limit "
            f"({ingest_memory_limit()}); ingest never spills to disk, because raw card "
            "numbers must not reach it. Split the file, or raise "
            "TRIALGUARD_INGEST_MEMORY_LIMIT (e.g. 6GB) and rerun: nothing of it was loaded"
        ) from None
    except duckdb.Error as exc:
        raise UnreadableFile(
            f"{info.path.name} could not be read as {info.format}: {safe_message(str(exc))}"
        ) from None
    if number:
        numbering.apply(con)
    clock.lap("stage")
    return numbering


def _number_rows(con: duckdb.DuckDBPyConnection, info: FileInfo, numbering: LineNumbering) -> None:
    """Number rows staged from a guessed ``simple_lines`` CSV by what :func:`sniff` found."""
    if not (numbering.by_position and info.format == "csv" and not info.simple_lines):
        numbering.apply(con)
        return
    register_line_starts(con, info)  # quoted newlines or blank lines: physical lines
    try:
        dataclasses.replace(numbering, line_starts=True).apply(con)
    finally:
        con.unregister("_tg_lines")


def _check_staged(con: duckdb.DuckDBPyConnection, info: FileInfo, result: FileResult) -> None:
    """De-duplicate the staged rows, count them and redact the raw rows of invalid ones."""
    kind = INPUT_KINDS[result.kind]
    has_key = bool(TABLES[kind.name][1])
    if kind is TERMINAL_EVENTS:
        con.execute(f"UPDATE {STAGE} SET event_id = {EVENT_ID_SQL}")
    if has_key:
        _deduplicate(con, kind, info.file_id)
    result.rows_read = _count(con, f"SELECT count(*) FROM {STAGE}")
    result.duplicates = _count(con, f"SELECT count(*) FROM {STAGE} WHERE _dup") if has_key else 0
    _redact_quarantined(con)


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


# ---------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------


def _check_policy_value(pid: str, key: str, value: Any) -> str | None:
    expected = POLICY_KEYS[key]
    where = f"policy {pid!r} key {key!r}"
    if expected == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{where} must be a whole number >= 0, got {value!r}"
        return None
    if expected == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"{where} must be a list of strings, got {value!r}"
        allowed = {
            "allowed_card_types": CARD_TYPES,
            "allowed_txn_types": TXN_TYPES,
            "allowed_entry_modes": tuple(ENTRY_MODES),
        }.get(key)
        if allowed is not None:
            bad = [v for v in value if v not in allowed]
            if bad:
                return f"{where} has unknown code(s) {bad}; expected some of {list(allowed)}"
        if key == "business_hours":
            ok = len(value) == 2 and all(
                len(v) == 5
                and v[2] == ":"
                and v[:2].isdigit()
                and v[3:].isdigit()
                and int(v[:2]) < 24
                and int(v[3:]) < 60
                for v in value
            )
            if not ok:
                return f'{where} must be two times ["HH:MM", "HH:MM"], got {value!r}'
        return None
    if expected == "dict[str,int]":
        if not isinstance(value, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values()
        ):
            return f"{where} must be a table of whole numbers >= 0, got {value!r}"
        bad = [k for k in value if k not in TERMINAL_KINDS]
        if bad:
            return f"{where} has unknown terminal kind(s) {bad}; expected {list(TERMINAL_KINDS)}"
        return None
    return None  # pragma: no cover - POLICY_KEYS only uses the types above


def parse_policies(text: str, name: str = "policies") -> dict[str, dict[str, Any]]:
    """Policies of a TOML text, checked against :data:`features.schema.POLICY_KEYS`.

    Raises
    ------
    UnreadableFile
        Not TOML, no ``[policies.<id>]`` table, an unknown key or a wrong type;
        the message names the policy and the key.

    Examples
    --------
    >>> parse_policies('[policies.p1]\\nmax_daily_txn_count = 50')
    {'p1': {'max_daily_txn_count': 50}}
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UnreadableFile(f"{name} is not valid TOML: {exc}") from None
    unknown_top = [k for k in doc if k != "policies"]
    policies = doc.get("policies")
    if not isinstance(policies, dict) or not policies or unknown_top:
        raise UnreadableFile(
            f"{name} must hold only [policies.<policy_id>] tables"
            + (f"; found top-level key(s) {unknown_top}" if unknown_top else "")
        )
    out: dict[str, dict[str, Any]] = {}
    for pid, body in policies.items():
        if not isinstance(body, dict):
            raise UnreadableFile(f"{name}: policies.{pid} must be a table of keys")
        for key, value in body.items():
            if key not in POLICY_KEYS:
                raise UnreadableFile(
                    f"{name}: policy {pid!r} has unknown key {key!r}; "
                    f"allowed keys are {', '.join(POLICY_KEYS)}"
                )
            problem = _check_policy_value(pid, key, value)
            if problem:
                raise UnreadableFile(f"{name}: {problem}")
        out[pid] = body
    return out


def policy_version(body: dict[str, Any]) -> str:
    """sha256 of the policy's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _load_policy_file(con: duckdb.DuckDBPyConnection, info: FileInfo, result: FileResult) -> None:
    try:
        text = info.path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UnreadableFile(f"{info.path.name} is not UTF-8 text; TOML must be UTF-8") from None
    policies = parse_policies(text, info.path.name)
    result.kind = POLICIES_KIND
    now = datetime.now()
    for pid, body in policies.items():
        version = policy_version(body)
        result.rows_read += 1
        if _count(
            con,
            "SELECT count(*) FROM policies WHERE policy_id = ? AND version = ?",
            [pid, version],
        ):
            result.duplicates += 1
            continue
        con.execute(
            "INSERT INTO policies VALUES (?, ?, ?, ?, ?)",
            [pid, version, json.dumps(body, sort_keys=True), info.file_id, now],
        )
        result.accepted += 1


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    settings: Settings,
    kind: str | None = None,
    gate: Any = None,
    pads: tuple[bytes, bytes] | None = None,
) -> FileResult:
    """Ingest one file in one transaction; never raises for a bad file.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        An open store (tables created by :func:`pipelines.storage.connect`).
    path : str or Path
        The file.
    settings : Settings
        Key and time zone.
    kind : str or None
        Force the input kind instead of recognising it from the columns.
    gate : Gate or None
        A :class:`pipelines.ingest.gate.Gate`; ``None`` skips the quality gate.
    pads : (bytes, bytes) or None
        HMAC pads of the key (computed from ``settings`` when not given).

    Returns
    -------
    FileResult

    Notes
    -----
    A CSV whose first 64 KiB are UTF-8 (:func:`pipelines.ingest.readers.guess_csv`) and
    whose path has not been loaded before is staged while :func:`sniff` hashes and
    scans it in a thread (sniffing a 2 GB file costs ~5 s that staging would
    otherwise wait for). Nothing is decided on the guess: once the sniff is done,
    a file it rejects is rejected, a file already loaded is skipped, and a file
    whose format, compression or encoding differs from the guess is staged again.
    """
    path = Path(path)
    t0 = time.perf_counter()
    clock = _Clock()
    started = datetime.now()
    result = FileResult(path=str(path), status="rejected")
    guess = _guess(con, path, kind)
    staged: LineNumbering | None = None
    early: Exception | None = None  # an error of the staging from the guess
    if guess is not None:
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="trialguard-sniff")
        sniffing = pool.submit(sniff, path)
        pool.shutdown(wait=False)
        if pads is None:
            pads = hmac_pads(settings.pan_key())
        attach_staging(con, settings.db_path)
        try:
            staged = _stage_rows(
                con, guess, result, kind, pads, settings.timezone, clock, number=False
            )
        except Exception as exc:  # noqa: BLE001 - judged below, once the sniff has said what the file is
            early = exc
    try:
        info = sniffing.result() if guess is not None else sniff(path)
    except (UnreadableFile, OSError) as exc:
        if guess is not None:
            _drop_staged(con)
        result = FileResult(path=str(path), status="rejected", message=safe_message(str(exc)))
        result.file_id = _hash_or_none(path)
        _record_rejection(con, result, started)
        return result
    result.file_id, result.format, result.encoding = info.file_id, info.format, info.encoding
    clock.lap("sniff")  # with a guess: the wait for the sniff after staging
    if guess is not None and _differs(guess, info):
        _drop_staged(con)
        staged, early, result.kind = None, None, None
    if _count(
        con,
        "SELECT count(*) FROM ingest_manifest WHERE file_id = ? AND status = 'loaded'",
        [info.file_id],
    ):
        if guess is not None:
            _drop_staged(con)
        result.status = "skipped"
        result.message = "already ingested (same content hash); skipped"
        return result
    try:
        if early is not None:
            raise early
        if info.format == "toml":
            if kind not in (None, POLICIES_KIND):
                raise UnreadableFile(f"{path.name} is a policy set (.toml), not {kind}")
            con.execute("BEGIN TRANSACTION")
            _load_policy_file(con, info, result)
        else:
            if pads is None:
                pads = hmac_pads(settings.pan_key())
            attach_staging(con, settings.db_path)
            # stages in the scratch database, then begins the file's transaction
            _load_table_file(con, info, result, kind, pads, settings.timezone, gate, clock, staged)
        result.status = "loaded"
        if result.gate_success is False:
            result.message = "loaded; quality gate failed (see gate_results and Data Docs)"
        _manifest(con, result, started, datetime.now())
        con.execute("COMMIT")
        if info.format != "toml":
            _drop_staged(con)
    except Exception as exc:
        _rollback(con)
        close_source(con)
        if info.format != "toml":
            _drop_staged(con)
        if not isinstance(exc, UnreadableFile | duckdb.Error | OSError | EOFError):
            if type(exc).__name__ == "MissingKeyError":
                raise
            exc_text = f"internal error {type(exc).__name__}: {exc}"
        else:
            exc_text = str(exc)
        result = FileResult(
            path=str(path),
            status="rejected",
            file_id=info.file_id,
            kind=result.kind,
            format=info.format,
            encoding=info.encoding,
            message=safe_message(exc_text),
        )
        _record_rejection(con, result, started)
    result.seconds = time.perf_counter() - t0
    result.stages = clock.stages
    return result


def _guess(con: duckdb.DuckDBPyConnection, path: Path, kind: str | None) -> FileInfo | None:
    """The guessed format of a CSV to stage while it is sniffed, or ``None`` to sniff first.

    ``None`` also when the same path was loaded before: a file ingested again is
    most likely the same file, which the hash skips without staging it.
    """
    if kind == POLICIES_KIND or path.suffix.lower() == ".toml":
        return None
    if _count(
        con,
        "SELECT count(*) FROM ingest_manifest WHERE source_path = ? AND status = 'loaded'",
        [str(path)],
    ):
        return None
    return guess_csv(path)


def _differs(guess: FileInfo, info: FileInfo) -> bool:
    """Whether rows staged from ``guess`` were read differently from how ``info`` says."""
    return (guess.format, guess.compression, guess.encoding) != (
        info.format,
        info.compression,
        info.encoding,
    )


def _hash_or_none(path: Path) -> str:
    try:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return hashlib.sha256(str(path).encode()).hexdigest()


def _record_rejection(
    con: duckdb.DuckDBPyConnection, result: FileResult, started: datetime
) -> None:
    con.execute("BEGIN TRANSACTION")
    _manifest(con, result, started, datetime.now())
    con.execute("COMMIT")


def ensure_default_policy(con: duckdb.DuckDBPyConnection, settings: Settings) -> FileResult | None:
    """Load the shipped ``default`` policy when the store has none; else do nothing."""
    if _count(con, "SELECT count(*) FROM policies WHERE policy_id = ?", [DEFAULT_POLICY_ID]):
        return None
    return ingest_file(con, DEFAULT_POLICIES_FILE, settings)


def ingest_paths(
    settings: Settings,
    paths: Sequence[str | Path],
    kind: str | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    gate: bool = True,
) -> IngestReport:
    """Ingest files and folders into the store; the work of ``trialguard ingest``.

    Parameters
    ----------
    settings : Settings
        Database path, card-number key and time zone.
    paths : sequence of str or Path
        Files and folders (folders are searched recursively). Order: policies,
        the terminal registry, then the rest, each by name.
    kind : str or None
        Force the kind of every non-TOML file (``--kind``).
    con : duckdb.DuckDBPyConnection or None
        An open store to use (left open); by default ``settings.db_path`` is opened
        and closed.
    gate : bool
        Run the Great Expectations gate on each file (and render Data Docs).

    Returns
    -------
    IngestReport
        Per-file results; ``report.ok`` is false if a file was rejected or a gate failed.

    Raises
    ------
    MissingKeyError
        No card-number key is configured (nothing is ingested).
    FileNotFoundError
        A path does not exist (nothing is ingested).
    """
    from pipelines.runlock import run_lock
    from pipelines.storage import connect

    t0 = time.perf_counter()
    files = order_files(expand_paths(paths), kind)
    pads = hmac_pads(settings.pan_key())
    own = con is None
    with run_lock(settings, "ingest"):
        if own:
            con = connect(settings.db_path)
        try:
            con.execute(f"SET TimeZone = {_lit(settings.timezone)}")
            con.execute("SET enable_progress_bar = false")
            previous_limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
            previous_temp = con.execute("SELECT current_setting('temp_directory')").fetchone()[0]
            con.execute(f"SET memory_limit = {_lit(ingest_memory_limit())}")
            # Raw card numbers pass through DuckDB's reader and function buffers while a
            # file is staged; spilled, they would land in the temp folder in clear (PCI DSS
            # 3.3-3.5). So ingest never spills: a file that does not fit in the memory
            # limit is rejected with a message saying what to do.
            con.execute("SET temp_directory = ''")
            run_id = _start_run(con, files)
            checker = None
            if gate:
                from pipelines.ingest.gate import Gate

                checker = Gate(settings.data_docs_dir)
                checker.warm_up()  # imports Great Expectations while the first file loads
            results = [ingest_file(con, f, settings, kind, checker, pads) for f in files]
            default = ensure_default_policy(con, settings)
            if default is not None:
                results.append(default)
            if checker is not None:
                checker.build_docs()
            report = IngestReport(run_id, results, time.perf_counter() - t0)
            _finish_run(con, report)
        finally:
            detach_staging(con, settings.db_path)
            if own:
                con.close()
            else:
                con.execute(f"SET memory_limit = {_lit(previous_limit)}")
                con.execute(f"SET temp_directory = {_lit(previous_temp)}")
    return report


def ingest_memory_limit() -> str:
    """DuckDB ``memory_limit`` while ingesting: ``TRIALGUARD_INGEST_MEMORY_LIMIT`` or 2GB.

    Peak resident memory is about this plus the Python side (Great Expectations,
    the gate sample). Ingest never spills to disk (raw card numbers would reach it):
    a file larger than the limit allows is rejected with a clear message.
    """
    return os.environ.get("TRIALGUARD_INGEST_MEMORY_LIMIT", "").strip() or INGEST_MEMORY_LIMIT


def _start_run(con: duckdb.DuckDBPyConnection, files: list[Path]) -> str:
    run_id = f"ingest-{datetime.now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    con.execute(
        "INSERT INTO runs (run_id, command, started_at, status, inputs) VALUES (?, ?, ?, ?, ?)",
        [run_id, "ingest", datetime.now(), "running", json.dumps([str(f) for f in files])],
    )
    return run_id


def _finish_run(con: duckdb.DuckDBPyConnection, report: IngestReport) -> None:
    inputs = [
        {"path": f.path, "file_id": f.file_id, "status": f.status, "kind": f.kind}
        for f in report.files
    ]
    totals = report.totals
    message = (
        "ok"
        if report.ok
        else f"{totals['files_rejected']} file(s) rejected, {totals['gates_failed']} gate(s) failed"
    )
    con.execute(
        "UPDATE runs SET finished_at = ?, status = ?, inputs = ?, row_counts = ?, "
        "duration_s = ?, message = ? WHERE run_id = ?",
        [
            datetime.now(),
            "succeeded" if report.ok else "failed",
            json.dumps(inputs),
            json.dumps(totals),
            report.seconds,
            message,
            report.run_id,
        ],
    )


# ---------------------------------------------------------------------------
# Prefect flow (thin tasks over the plain functions above)
# ---------------------------------------------------------------------------


def ingest_flow(paths: list[str], db: str | None = None, kind: str | None = None) -> dict:
    """Prefect flow running :func:`ingest_paths`; returns the totals (raises if not ok)."""
    return _prefect_ingest_flow()(paths, db=db, kind=kind)


_FLOW = None


def _prefect_ingest_flow():
    global _FLOW
    if _FLOW is None:
        from prefect import flow, task
        from prefect.cache_policies import NO_CACHE

        @task(name="ingest files", cache_policy=NO_CACHE)
        def ingest_task(paths: list[str], db: str | None, kind: str | None) -> dict:
            report = ingest_paths(Settings.from_env(db=db), paths, kind=kind)
            return {
                "ok": report.ok,
                "totals": report.totals,
                "files": [asdict(f) for f in report.files],
            }

        @flow(name="ingest", log_prints=True)
        def _ingest(paths: list[str], db: str | None = None, kind: str | None = None) -> dict:
            # load -> validate -> write, per file, each file atomic
            out = ingest_task(paths, db, kind)
            print(f"ingest totals: {out['totals']}")
            if not out["ok"]:
                raise RuntimeError(
                    f"ingest finished with problems: {out['totals']['files_rejected']} file(s) "
                    f"rejected, {out['totals']['gates_failed']} gate(s) failed; see "
                    "ingest_manifest and gate_results"
                )
            return out["totals"]

        _FLOW = _ingest
    return _FLOW


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard ingest``."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to ingest")
    parser.add_argument(
        "--kind",
        choices=list(INPUT_KINDS),
        default=None,
        help="input kind of every non-TOML file (default: recognised from the columns)",
    )
    parser.add_argument(
        "--no-gate",
        action="store_true",
        help="skip the Great Expectations gate and Data Docs",
    )


def print_report(report: IngestReport, out: Any = None) -> None:
    """Per-file accounting table and totals (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out or sys.stdout, width=140)
    table = Table(title=f"ingest {report.run_id}")
    for head in (
        "file",
        "kind",
        "status",
        "read",
        "accepted",
        "quarantined",
        "duplicates",
        "pan redacted",
        "gate",
        "message",
    ):
        table.add_column(head, overflow="fold")
    for f in report.files:
        gate = "-" if f.gate_success is None else ("pass" if f.gate_success else "FAILED")
        table.add_row(
            Path(f.path).name,
            f.kind or "?",
            f.status,
            f"{f.rows_read:,}",
            f"{f.accepted:,}",
            f"{f.quarantined:,}",
            f"{f.duplicates:,}",
            f"{f.pan_redactions:,}",
            gate,
            f.message,
        )
    t = report.totals
    table.add_row(
        "total",
        "",
        f"{t['files_loaded']} loaded, {t['files_rejected']} rejected, {t['files_skipped']} skipped",
        f"{t['rows_read']:,}",
        f"{t['accepted']:,}",
        f"{t['quarantined']:,}",
        f"{t['duplicates']:,}",
        f"{t['pan_redactions']:,}",
        f"{t['gates_failed']} failed",
        f"{report.seconds:.1f} s",
    )
    console.print(table)


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``trialguard ingest``: 0 when every file loaded and passed its gate, else 1."""
    try:
        report = ingest_paths(settings, args.paths, kind=args.kind, gate=not args.no_gate)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_report(report)
    if not report.ok:
        t = report.totals
        print(
            f"ingest finished with problems: {t['files_rejected']} file(s) rejected, "
            f"{t['gates_failed']} quality gate(s) failed; see the table above, "
            "ingest_manifest and gate_results",
            file=sys.stderr,
        )
        return 1
    return 0
