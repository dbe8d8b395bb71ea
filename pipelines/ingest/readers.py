"""Reading input files: format, compression and encoding detection, and a text view.

:func:`sniff` makes one streaming pass over a file: its sha256 (the manifest's
``file_id``), gzip detection by magic bytes, the format (Parquet ``PAR1``,
JSON Lines starting with ``{``, else CSV; ``.toml`` is a policy set), and for
CSV the encoding (UTF-8 with BOM, UTF-8, else GB18030) plus what it takes to
number lines exactly. :func:`open_source` then exposes the file to DuckDB as a
temporary view of text columns (plus ``_tg_rn``, the record number, when the
reader gives it without a window), and :func:`line_numbering` says how
``_line`` is added to the rows staged from that view:

* CSV: the physical line on which the record starts (the header is line 1).
  When the file has no quote character and no blank line, that is record
  number + 1; otherwise the line starts are found with Python's ``csv`` module
  (exact with quoted fields holding newlines, and blank lines).
* JSON Lines: the record number (the line number when there are no blank lines).
* Parquet: the record number (1-based).

A file that cannot be read raises :class:`UnreadableFile` with a message that
says what was found and what was expected; it never quotes file content.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import csv
import gzip
import hashlib
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import duckdb

from pipelines.ingest.cards import safe_message

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
_CHUNK = 16 << 20
#: file extension (after removing ``.gz``) -> the format it claims
EXTENSION_FORMATS = {
    ".csv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".toml": "toml",
}
SOURCE_VIEW = "_tg_source"
LINE_COLUMN = "_line"
#: 1-based record number, in the source view when the reader gives it without a window
RN_COLUMN = "_tg_rn"


class UnreadableFile(ValueError):
    """A file that cannot be read at all; it is rejected as a whole."""


@dataclass(frozen=True)
class FileInfo:
    """What :func:`sniff` learned about a file.

    Attributes
    ----------
    path : Path
    file_id : str
        sha256 of the file's bytes.
    size : int
    format : str
        ``csv``, ``parquet``, ``jsonl`` or ``toml``.
    compression : str or None
        ``gzip`` or ``None``.
    encoding : str or None
        For CSV: ``utf-8``, ``utf-8-sig`` or ``gb18030``.
    simple_lines : bool
        For CSV: no quote character and no blank line, so record *i* is on line *i* + 1.
    """

    path: Path
    file_id: str
    size: int
    format: str
    compression: str | None
    encoding: str | None
    simple_lines: bool


def claimed_format(path: Path) -> tuple[str | None, bool]:
    """Format the file name claims (``None`` if unknown) and whether it ends in ``.gz``."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] in (".gz", ".gzip")
    if gz:
        suffixes = suffixes[:-1]
    return (EXTENSION_FORMATS.get(suffixes[-1]) if suffixes else None), gz


def _content_format(head: bytes) -> str:
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    text = head.lstrip(codecs.BOM_UTF8).lstrip()
    if text.startswith(b"{"):
        return "jsonl"
    return "csv"


class _Scan:
    """Streaming statistics of a (decompressed) CSV byte stream."""

    def __init__(self) -> None:
        self.head = b""
        self.quote = False
        self.blank = False
        self.prev_tail = b""
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.utf8_ok = True

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < 4096:
            self.head += chunk[: 4096 - len(self.head)]
        if not self.quote and b'"' in chunk:
            self.quote = True
        if not self.blank:
            # the chunk itself, then the few bytes across the boundary with the last one
            # (no copy of the chunk); b"\r" is found with memchr, the CRLF search only
            # runs when needed
            seam = self.prev_tail + chunk[:2]
            if (
                b"\n\n" in chunk
                or b"\n\n" in seam
                or (b"\r" in chunk and b"\n\r\n" in chunk)
                or b"\n\r\n" in seam
            ):
                self.blank = True
        self.prev_tail = (self.prev_tail + chunk[-2:])[-2:]  # chunks may be 1 byte long
        if self.utf8_ok:
            # ASCII is valid UTF-8: ``isascii`` is a fast scan where decoding builds a
            # str of the whole chunk; it is only valid with no partial character pending
            if chunk.isascii() and not self.utf8.getstate()[0]:
                return
            try:
                self.utf8.decode(chunk)
            except UnicodeDecodeError:
                self.utf8_ok = False

    def finish(self) -> None:
        if self.utf8_ok:
            try:
                self.utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                self.utf8_ok = False


def sniff(path: str | Path) -> FileInfo:
    """Hash a file and recognise its format, compression and (for CSV) encoding.

    Raises
    ------
    UnreadableFile
        Empty file, truncated or corrupt gzip, content that is not the format
        the name claims, or a CSV that is neither UTF-8 nor GB18030.
    """
    path = Path(path)
    claimed, named_gz = claimed_format(path)
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        first = fh.read(_CHUNK)
        if not first:
            raise UnreadableFile(
                f"{path.name} is empty (0 bytes); expected a header row or records"
            )
        gz = first.startswith(GZIP_MAGIC)
        if named_gz and not gz:
            raise UnreadableFile(
                f"{path.name} is named .gz but is not gzip-compressed (no gzip magic bytes); "
                "rename it or compress it"
            )
        if claimed == "toml" and not gz:
            sha.update(first)
            size += len(first)
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                sha.update(chunk)
                size += len(chunk)
            return FileInfo(path, sha.hexdigest(), size, "toml", None, "utf-8", True)
        scan = _Scan()
        inflate = zlib.decompressobj(wbits=47) if gz else None
        chunk = first
        # hashlib releases the GIL on large updates: hash each chunk in a worker
        # thread while this one scans it (about half the time on a 2 GB CSV)
        hasher = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        hashed: concurrent.futures.Future | None = None
        try:
            while chunk:
                if hashed is not None:
                    hashed.result()
                hashed = hasher.submit(sha.update, chunk)
                size += len(chunk)
                data = chunk
                if inflate is not None:
                    data = inflate.decompress(chunk)
                    # concatenated gzip members
                    while inflate.eof and inflate.unused_data:
                        rest = inflate.unused_data
                        inflate = zlib.decompressobj(wbits=47)
                        data += inflate.decompress(rest)
                if data:
                    scan.feed(data)
                    if len(scan.head) >= 4 and scan.head.startswith(PARQUET_MAGIC):
                        # Parquet needs no line scan; just finish the hash
                        scan.utf8_ok = False
                chunk = fh.read(_CHUNK)
        except zlib.error as exc:
            raise UnreadableFile(
                f"{path.name} is not a valid gzip archive ({safe_message(str(exc))}); "
                "re-export or re-compress the file"
            ) from None
        finally:
            if hashed is not None:
                hashed.result()
            hasher.shutdown()
        if inflate is not None and not inflate.eof:
            raise UnreadableFile(
                f"{path.name} is a truncated gzip archive (the compressed stream ends early); "
                "copy the complete file again"
            )
        scan.finish()
    fmt = _content_format(scan.head)
    if claimed == "toml":
        fmt = "toml"
    elif claimed is not None and claimed != fmt:
        raise UnreadableFile(
            f"{path.name} is named as {claimed} but its content looks like {fmt}; "
            f"expected {claimed} content (fix the file or its name)"
        )
    if not scan.head.strip(codecs.BOM_UTF8 + b" \r\n\t"):
        raise UnreadableFile(f"{path.name} holds no data; expected a header row or records")
    encoding = None
    simple = True
    if fmt == "csv":
        if scan.head.startswith(codecs.BOM_UTF8):
            encoding = "utf-8-sig"
        elif scan.utf8_ok:
            encoding = "utf-8"
        else:
            encoding = "gb18030"
            if not _decodes(path, gz, "gb18030"):
                raise UnreadableFile(
                    f"{path.name} is neither UTF-8 nor GB18030 text; "
                    "expected CSV in UTF-8, UTF-8 with BOM or GB18030"
                )
        simple = not scan.quote and not scan.blank
    return FileInfo(path, sha.hexdigest(), size, fmt, "gzip" if gz else None, encoding, simple)


def guess_csv(path: str | Path) -> FileInfo | None:
    """What :func:`sniff` will most likely find for a CSV, from its first 64 KiB only.

    Returns the guess (no ``file_id``, ``simple_lines`` assumed) for a plain or
    gzip CSV whose beginning is UTF-8 (with or without BOM); ``None`` when it is
    anything else or cannot be read. The ingest stages such a file while
    :func:`sniff` hashes and scans it, then compares the guess with the real
    answer (and stages again if they differ).
    """
    path = Path(path)
    claimed, named_gz = claimed_format(path)
    if claimed not in (None, "csv"):
        return None
    try:
        with path.open("rb") as fh:
            raw = fh.read(1 << 16)
        gz = raw.startswith(GZIP_MAGIC)
        if named_gz and not gz:
            return None
        head = zlib.decompressobj(wbits=47).decompress(raw, 1 << 16) if gz else raw
    except (OSError, zlib.error):
        return None
    if not head.strip(codecs.BOM_UTF8 + b" \r\n\t") or _content_format(head) != "csv":
        return None
    if head.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    else:
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head)  # a cut character is fine
        except UnicodeDecodeError:
            return None
        encoding = "utf-8"
    return FileInfo(path, "", 0, "csv", "gzip" if gz else None, encoding, True)


def _decodes(path: Path, gz: bool, encoding: str) -> bool:
    decoder = codecs.getincrementaldecoder(encoding)()
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except (UnicodeDecodeError, EOFError, OSError):
        return False
    return True


def _text_stream(info: FileInfo) -> io.TextIOBase:
    raw = gzip.open(info.path, "rb") if info.compression else open(info.path, "rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding=info.encoding or "utf-8", newline="")


def csv_line_starts(info: FileInfo) -> list[int]:
    """Physical line on which each CSV record (after the header) starts."""
    starts: list[int] = []
    with _text_stream(info) as fh:
        reader = csv.reader(fh)
        prev = 0
        header = True
        for row in reader:
            start = prev + 1
            prev = reader.line_num
            if not row:
                continue  # a blank line: no record
            if header:
                header = False
                continue
            starts.append(start)
    return starts


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def open_source(con: duckdb.DuckDBPyConnection, info: FileInfo) -> list[str]:
    """Expose the file as the temporary view ``_tg_source`` (text columns, no ``_line``).

    Line numbers come from :func:`line_numbering`, applied by the caller after its
    first projection, so that nothing ever buffers raw values.

    Returns
    -------
    list of str
        The file's column names, in file order.

    Raises
    ------
    UnreadableFile
        When DuckDB cannot parse the file.
    """
    try:
        if info.format == "csv":
            return _open_csv(con, info)
        if info.format == "jsonl":
            return _open_jsonl(con, info)
        if info.format == "parquet":
            return _open_parquet(con, info)
    except UnreadableFile:
        raise
    except (duckdb.Error, OSError, EOFError, ValueError) as exc:
        raise UnreadableFile(
            f"{info.path.name} could not be read as {info.format}: {safe_message(str(exc))}"
        ) from None
    raise UnreadableFile(f"{info.path.name}: format {info.format!r} has no table reader")


def close_source(con: duckdb.DuckDBPyConnection) -> None:
    """Drop the view and any helper objects :func:`open_source` created."""
    con.execute(f"DROP VIEW IF EXISTS {SOURCE_VIEW}")
    con.execute("DROP TABLE IF EXISTS _tg_json")
    for name in ("_tg_lines", "_tg_arrow"):
        try:
            con.unregister(name)
        except (duckdb.Error, KeyError):
            pass


def _columns_of(con: duckdb.DuckDBPyConnection, relation_sql: str) -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {relation_sql}").fetchall()]


def _open_csv(con: duckdb.DuckDBPyConnection, info: FileInfo) -> list[str]:
    if info.encoding == "gb18030":
        return _open_csv_transcoded(con, info)
    comp = "gzip" if info.compression else "none"
    reader = (
        f"read_csv({_sql_str(str(info.path))}, all_varchar=true, header=true, delim=',', "
        f"quote='\"', escape='\"', compression='{comp}', encoding='utf-8', "
        "auto_detect=false, null_padding=false, strict_mode=true)"
    )
    # auto_detect=false needs the column names: read them from the header line
    with _text_stream(info) as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise UnreadableFile(f"{info.path.name} has no header row; expected CSV with a header")
    names = [h.lstrip("\ufeff").strip() for h in header]
    _check_names(info, names)
    cols = ", ".join(f"{_sql_str(n)}: 'VARCHAR'" for n in names)
    reader = reader[:-1] + f", columns={{{cols}}})"
    return _finish_csv(con, info, reader, names)


def _open_csv_transcoded(con: duckdb.DuckDBPyConnection, info: FileInfo) -> list[str]:
    import polars as pl

    with _text_stream(info) as fh:
        text = fh.read()
    frame = pl.read_csv(io.StringIO(text), infer_schema=False, has_header=True)
    del text
    names = [c.lstrip("\ufeff").strip() for c in frame.columns]
    _check_names(info, names)
    frame.columns = names
    frame = frame.with_row_index(RN_COLUMN, offset=1)
    con.register("_tg_arrow", frame.to_arrow())
    return _finish_csv(con, info, "_tg_arrow", names)


def _finish_csv(con, info: FileInfo, relation: str, names: list[str]) -> list[str]:
    cols = ", ".join(_ident(n) for n in names)
    if relation == "_tg_arrow":
        cols += f", {RN_COLUMN}"
    con.execute(f"CREATE OR REPLACE TEMP VIEW {SOURCE_VIEW} AS SELECT {cols} FROM {relation}")
    if not info.simple_lines:
        register_line_starts(con, info)
    return names


def register_line_starts(con: duckdb.DuckDBPyConnection, info: FileInfo) -> None:
    """Register ``_tg_lines`` (``_rn``: record number, ``_start``: its physical line)."""
    import pyarrow as pa

    starts = csv_line_starts(info)
    con.register("_tg_lines", pa.table({"_rn": list(range(1, len(starts) + 1)), "_start": starts}))


@dataclass(frozen=True)
class LineNumbering:
    """How a staged file gets its ``_line`` column.

    ``select(relation)`` is the query adding ``_line`` to a projection of the
    source view. When ``by_position`` is set that query leaves ``_line`` empty
    and :meth:`apply` fills it in once ``table`` has been created from it.
    """

    select_sql: str
    table: str
    by_position: bool = False
    offset: int = 0
    line_starts: bool = False

    def select(self, relation: str) -> str:
        return self.select_sql.replace("{relation}", relation)

    def apply(self, con: duckdb.DuckDBPyConnection) -> None:
        """Number the rows of ``table`` (a no-op unless ``by_position``).

        A ``CREATE TABLE AS`` keeps the order of its input (DuckDB's
        ``preserve_insertion_order``), so record ``k`` is the row with the
        ``k``-th smallest ``rowid``. A new table's row ids are consecutive
        (inside a transaction they start at a large base); when they are, the
        record number is ``rowid - min + 1``, otherwise a sort by ``rowid`` gives it.
        """
        if not self.by_position:
            return
        t, line = self.table, LINE_COLUMN
        lo, hi, n = con.execute(f"SELECT min(rowid), max(rowid), count(*) FROM {t}").fetchone()
        if not n:
            return
        if hi - lo + 1 == n:
            con.execute(f"UPDATE {t} SET {line} = rowid - {int(lo)} + {1 + self.offset}")
        else:  # pragma: no cover - DuckDB gives a new table consecutive row ids
            con.execute(
                f"UPDATE {t} SET {line} = r._rn + {self.offset} FROM (SELECT rowid AS _id, "
                f"row_number() OVER (ORDER BY rowid) AS _rn FROM {t}) r WHERE {t}.rowid = r._id"
            )
        if self.line_starts:
            # quoted fields with newlines or blank lines: the exact physical line
            con.execute(
                f"UPDATE {t} SET {line} = l._start FROM _tg_lines l "
                f"WHERE l._rn = {t}.{line} - {self.offset}"
            )


def line_numbering(con: duckdb.DuckDBPyConnection, info: FileInfo, table: str) -> LineNumbering:
    """How to add ``_line`` to rows of the source view staged into ``table``.

    When the reader gives the record number (``_tg_rn``: Parquet, transcoded
    CSV) the query numbers the rows itself. Otherwise the staging query leaves
    ``_line`` empty and :meth:`LineNumbering.apply` numbers the rows afterwards
    from their position in ``table``. That avoids ``row_number() OVER ()``,
    whose streaming window runs the whole read, parse and checks on one thread.
    """
    view_cols = {r[0] for r in con.execute(f"DESCRIBE {SOURCE_VIEW}").fetchall()}
    lines = info.format == "csv" and not info.simple_lines
    offset = 1 if info.format == "csv" else 0  # CSV: the header is line 1
    if RN_COLUMN in view_cols:
        inner = f"SELECT * EXCLUDE ({RN_COLUMN}), {RN_COLUMN} AS _tg_n FROM {{relation}}"
        if lines:
            return LineNumbering(
                f"SELECT s.* EXCLUDE (_tg_n), coalesce(l._start, s._tg_n + 1) AS {LINE_COLUMN} "
                f"FROM ({inner}) s LEFT JOIN _tg_lines l ON l._rn = s._tg_n",
                table,
            )
        return LineNumbering(
            f"SELECT * EXCLUDE (_tg_n), _tg_n + {offset} AS {LINE_COLUMN} FROM ({inner})", table
        )
    return LineNumbering(
        f"SELECT *, CAST(NULL AS BIGINT) AS {LINE_COLUMN} FROM {{relation}}",
        table,
        by_position=True,
        offset=offset,
        line_starts=lines,
    )


def _check_names(info: FileInfo, names: list[str]) -> None:
    if any(not n for n in names):
        raise UnreadableFile(
            f"{info.path.name} has an empty column name in its header; every column needs a name"
        )
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UnreadableFile(
            f"{info.path.name} repeats header column(s) {', '.join(dup)}; "
            "every column name must be unique"
        )


def _open_jsonl(con: duckdb.DuckDBPyConnection, info: FileInfo) -> list[str]:
    comp = "gzip" if info.compression else "none"
    src = f"read_ndjson_objects({_sql_str(str(info.path))}, compression='{comp}')"
    # the file is read again per query rather than kept in a table of raw JSON
    # (which would hold card numbers); windows only ever see types and key lists
    bad = con.execute(
        f"SELECT min(rn) FROM (SELECT t, row_number() OVER () AS rn FROM "
        f"(SELECT json_type(json) AS t FROM {src})) WHERE t <> 'OBJECT'"
    ).fetchall()[0][0]
    if bad is not None:
        raise UnreadableFile(
            f"{info.path.name} record {bad} is not a JSON object; "
            "expected JSON Lines with one object per line"
        )
    names = [
        r[0]
        for r in con.execute(
            "SELECT k FROM (SELECT unnest(ks) AS k, rn FROM (SELECT ks, row_number() OVER () "
            f"AS rn FROM (SELECT json_keys(json) AS ks FROM {src}))) GROUP BY k "
            "ORDER BY min(rn), k"
        ).fetchall()
    ]
    if not names:
        raise UnreadableFile(f"{info.path.name} holds no JSON records with keys")
    _check_names(info, [n.strip() for n in names])
    cols = ", ".join(f"json ->> {_sql_str('$.' + _json_key(n))} AS {_ident(n)}" for n in names)
    con.execute(f"CREATE OR REPLACE TEMP VIEW {SOURCE_VIEW} AS SELECT {cols} FROM {src}")
    return names


def _json_key(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


def _open_parquet(con: duckdb.DuckDBPyConnection, info: FileInfo) -> list[str]:
    if info.compression:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with gzip.open(info.path, "rb") as fh:
            table = pq.read_table(io.BytesIO(fh.read()))
        names = list(table.column_names)
        table = table.append_column("file_row_number", pa.array(range(table.num_rows)))
        con.register("_tg_arrow", table)
        relation = "_tg_arrow"
    else:
        relation = f"read_parquet({_sql_str(str(info.path))}, file_row_number=true)"
        names = [n for n in _columns_of(con, relation) if n != "file_row_number"]
    _check_names(info, names)
    cols = ", ".join(f"CAST({_ident(n)} AS VARCHAR) AS {_ident(n)}" for n in names)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {SOURCE_VIEW} AS SELECT {cols}, "
        f"file_row_number + 1 AS {RN_COLUMN} FROM {relation}"
    )
    return names
