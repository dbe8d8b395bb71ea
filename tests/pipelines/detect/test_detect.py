"""`trialguard run`: run_detection / run_range on real DuckDB files."""

from __future__ import annotations

import argparse
import importlib.util
import json
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from models.config import config_version, load_config
from pipelines.detect.run import add_arguments, main, run_detection, run_range
from pipelines.settings import Settings
from pipelines.storage import connect

_path = Path(__file__).parents[2] / "features" / "_frames.py"
_spec = importlib.util.spec_from_file_location("_frames", _path)
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

DAY2 = F.DAY + timedelta(days=1)


def _insert(con, table, df):
    con.register("_df", df.to_arrow())
    con.execute(f"INSERT INTO {table} SELECT * FROM _df").fetchall()
    con.unregister("_df")


def build_store(path: Path) -> Settings:
    """30 ordinary terminals over two days; T0000029 is used 30 km away on both."""
    con = connect(path)
    ids = [f"T{i:07d}" for i in range(30)]
    _insert(con, "terminals", F.registry(ids))
    frames = []
    for day_start in (F.T0, F.T0 + timedelta(days=1)):
        for tid in ids:
            far = {"terminal_lat": 31.5} if tid == "T0000029" else {}
            t = F.txns(12, terminal_id=tid, start=day_start, **far)
            frames.append(t.with_columns(pl.col("txn_id") + f"-{day_start.day}"))
    _insert(con, "transactions", pl.concat(frames))
    con.close()
    return Settings(db_path=path)


def counts(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
            for t in ("flags", "terminal_day", "runs", "at_risk_cards", "dispositions")
        }
    finally:
        con.close()


@pytest.fixture
def store(tmp_path) -> Settings:
    return build_store(tmp_path / "store.duckdb")


def test_run_writes_flags_aggregates_and_run_record(store):
    res = run_detection(store, F.DAY)
    assert res.flags.height == 1
    flag = res.flags.row(0, named=True)
    assert (flag["terminal_id"], flag["behaviour"]) == ("T0000029", "relocation")
    reasons = json.loads(flag["reasons"])
    assert (
        reasons[0]["code"] == "outside_geofence" and "km from the registered" in reasons[0]["text"]
    )
    assert len(json.loads(flag["evidence"])) == 12
    con = duckdb.connect(str(store.db_path), read_only=True)
    assert con.execute("SELECT count(*) FROM terminal_day").fetchall()[0][0] == 30
    run = con.execute(
        "SELECT command, as_of, status, config_version, code_version FROM runs"
    ).fetchall()[0]
    con.close()
    assert run[:3] == ("run", F.DAY, "succeeded")
    assert run[3] == config_version(load_config())
    assert run[4]


def test_continuing_episode_and_rerun_keep_one_flag_and_the_disposition(store):
    first = run_detection(store, F.DAY)
    fid = first.flags["flag_id"][0]
    con = duckdb.connect(str(store.db_path))
    con.execute(
        "INSERT INTO dispositions VALUES (?, 'dismissed', 'ana', 'known move', ?, NULL)",
        [fid, datetime(2026, 3, 10, 18)],
    ).fetchall()
    con.close()
    run_detection(store, DAY2)
    run_detection(store, DAY2)  # re-run
    con = duckdb.connect(str(store.db_path), read_only=True)
    rows = con.execute("SELECT flag_id, first_seen, last_seen, status FROM flags").fetchall()
    n_disp = con.execute("SELECT count(*) FROM dispositions").fetchall()[0][0]
    n_td = con.execute("SELECT count(*) FROM terminal_day").fetchall()[0][0]
    con.close()
    assert rows == [(fid, F.DAY, DAY2, "dismissed")]
    assert n_disp == 1
    assert n_td == 60


def test_persist_false_writes_nothing_and_range_keeps_state_in_memory(store):
    before = counts(store.db_path)
    results = run_range(store, F.DAY, DAY2, persist=False)
    assert counts(store.db_path) == before
    assert [r.as_of for r in results] == [F.DAY, DAY2]
    # The second day extends the first day's flag, held in memory.
    assert results[0].flags["flag_id"].to_list() == results[1].flags["flag_id"].to_list()
    assert results[1].flags["last_seen"][0] == DAY2


def test_cli_date_and_range(store, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args(["--from", "2026-03-10", "--to", "2026-03-11"]), store) == 0
    assert counts(store.db_path)["runs"] == 2
    assert main(parser.parse_args(["--date", "2026-03-10", "--from", "2026-03-10"]), store) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--date", "10/03/2026"])
    assert "is not a date" in capsys.readouterr().err


def test_end_to_end_on_an_ingested_simulated_trial(tmp_path, pan_key_env):
    """Simulate, ingest (the real command path), detect: injected terminals get flagged."""
    from pipelines.ingest.load import ingest_paths
    from pipelines.simulate import write_trial

    start = date(2025, 9, 1)
    write_trial(tmp_path / "sim", 80, 6, start, seed=4242, fmt="parquet")
    settings = Settings.from_env(db=tmp_path / "e2e.duckdb")
    ingest_paths(settings, [tmp_path / "sim" / "landing"], gate=False)
    run_range(settings, start, start + timedelta(days=5))
    truth = pl.read_csv(
        tmp_path / "sim" / "truth.csv", schema_overrides={"terminal_id": pl.String}
    )
    con = duckdb.connect(str(settings.db_path), read_only=True)
    flags = pl.from_arrow(con.sql("SELECT terminal_id, behaviour FROM flags").to_arrow_table())
    registered = pl.from_arrow(
        con.sql("SELECT DISTINCT terminal_id FROM terminals").to_arrow_table()
    )
    con.close()
    mine = {
        "relocation",
        "cloned_terminal",
        "mcc_mismatch",
        "fallback_abuse",
        "trial_limit_breach",
        "disallowed_use",
    }
    expected = (
        truth.filter(pl.col("behaviour").is_in(list(mine)))
        .select("terminal_id", "behaviour")
        .unique()
    )
    found = expected.join(flags, on=["terminal_id", "behaviour"], how="semi")
    assert found.height >= 0.8 * expected.height, (expected, flags)
    clean = registered.join(truth, on="terminal_id", how="anti")
    flagged_clean = clean.join(flags, on="terminal_id", how="semi")
    assert clean.height > 10 and flagged_clean.height <= 0.05 * clean.height


def test_a_day_without_data_is_a_quiet_successful_run(tmp_path):
    settings = Settings(db_path=tmp_path / "empty.duckdb")
    res = run_detection(settings, date(2026, 1, 1))
    assert res.flags.height == 0 and res.counts["transactions"] == 0
    con = duckdb.connect(str(settings.db_path), read_only=True)
    assert con.execute("SELECT status FROM runs").fetchall() == [("succeeded",)]
    con.close()
