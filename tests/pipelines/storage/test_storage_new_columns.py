"""A database created before a column was added gains it on connect (old rows null)."""

from __future__ import annotations

import duckdb

from features.schema import TABLES, ddl
from pipelines.storage import connect


def test_connect_adds_columns_missing_from_an_older_table(tmp_path):
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute(ddl("terminal_day"))
    con.execute("ALTER TABLE terminal_day DROP COLUMN n_technical_incidents")
    con.execute(
        "INSERT INTO terminal_day (terminal_id, local_date, n_technical) "
        "VALUES ('T1', DATE '2025-09-01', 3)"
    )
    con.close()
    con = connect(db)
    cols = [r[0] for r in con.execute("DESCRIBE terminal_day").fetchall()]
    assert sorted(cols) == sorted(c.name for c in TABLES["terminal_day"][0])
    row = con.execute("SELECT n_technical, n_technical_incidents FROM terminal_day").fetchone()
    assert row == (3, None)
    con.close()
