"""Storage: the DuckDB file and every table, created from :mod:`features.schema`.

``connect`` opens (and creates) the store; ``docgen`` writes ``docs/tables.md``
from the same schema (``python -m pipelines.storage.docgen``). May import only
``features``; every stage imports this package, never the other way round.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from features.schema import TABLES, ddl


def connect(db_path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (and if needed create) the TrialGuard database with all its tables.

    Parameters
    ----------
    db_path : str or Path
        The DuckDB file; its folder is created when missing. ``":memory:"`` works too.
    read_only : bool
        Open without write access (tables must already exist).
    """
    if str(db_path) != ":memory:":
        path = Path(db_path)
        if read_only and not path.exists():
            raise FileNotFoundError(
                f"database {path} does not exist; run `trialguard ingest --db {path} FILES` "
                "(or `make demo`) first, or pass the right --db / TRIALGUARD_DB"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db_path), read_only=read_only)
    if not read_only:
        create_tables(con)
    return con


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create every table of :data:`features.schema.TABLES` that does not exist yet."""
    for table in TABLES:
        con.execute(ddl(table))
    # A table created by an older version gains the columns added since (null in
    # its old rows; readers treat those nulls, e.g. n_technical_incidents).
    have = set(
        con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        ).fetchall()
    )
    for table, (cols, _key) in TABLES.items():
        for c in cols:
            if (table, c.name) not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {c.name} {c.duckdb_type}")
