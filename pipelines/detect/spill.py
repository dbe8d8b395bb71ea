"""Spilling a big day: its transactions written once in terminal partitions (Arrow IPC).

The partitions are read back one at a time (:func:`pipelines.detect.partition.load_spilled`)
by this process, a worker process of the local runner or a Dask worker, so the
per-terminal step's memory follows the partition, not the day.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
from pyarrow import ipc

from pipelines.detect.store import _day_sql, _partition_sql


def spill_day_transactions(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    folder: Path,
    parts: int,
    lookback_days: int = 90,
    batch_rows: int = 500_000,
) -> list[Path]:
    """Write the day's transactions (as :func:`read_day_transactions`) split in terminal partitions.

    One scan of the day, streamed in Arrow batches of ``batch_rows`` rows. DuckDB
    adds each row's partition (:func:`_partition_sql`, as ``read_day_transactions``
    with ``partition``); each batch is put in partition order by one stable gather
    and its slices appended to one Arrow IPC file (lz4) per partition, in a
    sub-folder per partition. The rows stay Arrow from the database to the file:
    no conversion to polars and back, one file to open per partition. So a big day
    is read once, memory holds one batch at a time, and each partition can then be
    loaded on its own (:func:`load_spilled`), by this process or a worker. Every row
    of a terminal is in the same partition, in the order of the read. Returns the
    ``parts`` folders (the folder of an empty partition has no file). The caller
    removes ``folder``.
    """
    parts = int(parts)
    if parts < 1:
        raise ValueError(f"parts={parts!r}: expected a count of partitions >= 1, e.g. 4")
    folders = [Path(folder) / f"part-{i:04d}" for i in range(parts)]
    for f in folders:
        f.mkdir(parents=True, exist_ok=True)
    sql = f"SELECT *, ({_partition_sql(parts)})::INTEGER AS _tg_part FROM ({_day_sql()})"
    reader = con.sql(sql, params=[as_of, as_of - timedelta(days=lookback_days), as_of])
    reader = reader.to_arrow_reader(int(batch_rows))
    at = reader.schema.get_field_index("_tg_part")
    schema = reader.schema.remove(at)
    options = ipc.IpcWriteOptions(compression="lz4")
    writers: list[ipc.RecordBatchFileWriter | None] = [None] * parts
    try:
        for batch in reader:
            if batch.num_rows == 0:
                continue
            part = batch.column("_tg_part").to_numpy()
            counts = np.bincount(part, minlength=parts)
            rows = pa.RecordBatch.from_arrays(
                [c for k, c in enumerate(batch.columns) if k != at], schema=schema
            ).take(pa.array(np.argsort(part, kind="stable")))
            start = 0
            for i in np.flatnonzero(counts):
                if writers[i] is None:
                    writers[i] = ipc.new_file(
                        str(folders[i] / "rows.arrow"), schema, options=options
                    )
                writers[i].write_batch(rows.slice(start, int(counts[i])))
                start += int(counts[i])
            del batch, rows
    finally:
        for w in writers:
            if w is not None:
                w.close()
    return folders


def _only(df: pl.DataFrame | None, terminals: pl.Series) -> pl.DataFrame | None:
    """Rows of ``df`` about the given terminals (``None`` / frames without terminal_id kept)."""
    if df is None or "terminal_id" not in df.columns:
        return df
    return df.filter(pl.col("terminal_id").is_in(terminals))


def _spill_dir(settings) -> str | None:
    """Folder for the spilled partitions: beside the store (same protection), else the temp dir."""
    db = getattr(settings, "db_path", None)
    if db is None or str(db) == ":memory:":
        return None
    parent = Path(db).resolve().parent
    return str(parent) if parent.is_dir() else None
