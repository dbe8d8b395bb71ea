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

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from features.schema import (
    DEFAULT_POLICY_ID,
    INPUT_KINDS,
    POLICIES_KIND,
    TABLES,
    TERMINAL_EVENTS,
    InputKind,
)
from pipelines.ingest.cards import (
    hmac_pads,
    safe_message,
)
from pipelines.ingest.discover import expand_paths, order_files, recognise_kind
from pipelines.ingest.policies import DEFAULT_POLICIES_FILE, _load_policy_file
from pipelines.ingest.readers import (
    LINE_COLUMN,
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
from pipelines.ingest.results import FileResult, IngestReport
from pipelines.ingest.rows import (
    _deduplicate,
    _redact_quarantined,
    _setting,
    _write_accepted,
    _write_quarantine,
    register_redaction,
)
from pipelines.ingest.stage import (
    EVENT_ID_SQL,
    STAGE,
    _count,
    _drop_staged,
    _ident,
    _lit,
    _rollback,
    attach_staging,
    content_columns,
    detach_staging,
    stage_sql,
)
from pipelines.settings import Settings

#: DuckDB memory limit while ingesting (``TRIALGUARD_INGEST_MEMORY_LIMIT`` overrides it).
#: Nothing spills (``temp_directory = ''``); the staging table's blocks beyond it are
#: evicted to the scratch database file. 2GB: a 10M-row file peaks at 2.6 GiB RSS
#: (3.6 GiB with 3GB, same time).
INGEST_MEMORY_LIMIT = "2GB"


#: Rows handed to the Great Expectations gate per file (about; chosen by a hash of the line).
GATE_SAMPLE_ROWS = 100_000


class _Clock:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = self.stages.get(name, 0.0) + now - self._t
        self._t = now


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
