"""`trialguard evaluate` on a real DuckDB file."""

from __future__ import annotations

import argparse
import json
from datetime import date, datetime

import polars as pl

from pipelines import evaluate
from pipelines.settings import Settings
from pipelines.storage import connect


def cli_main(argv: list[str]) -> int:
    """``trialguard --db DB evaluate ...`` through the module's own parser and entry point."""
    assert argv[0] == "--db" and argv[2] == "evaluate"
    parser = argparse.ArgumentParser(prog="trialguard evaluate")
    evaluate.add_arguments(parser)
    return evaluate.main(parser.parse_args(argv[3:]), Settings.from_env(env={}, db=argv[1]))


def write_store(path) -> None:
    con = connect(path)
    flags = pl.DataFrame(
        {
            "flag_id": ["f1", "f2", "f3"],
            "terminal_id": ["T0000001", "T0000003", "T0000002"],
            "merchant_id": ["123456789012345"] * 3,
            "behaviour": ["card_compromise", "fraud_hotspot", "fraud_hotspot"],
            "category": ["data_leakage", "illegal_terminal", "illegal_terminal"],
            "score": [0.97, 0.9, 0.6],
            "severity": ["high", "high", "medium"],
            "first_seen": [date(2024, 3, 5), date(2024, 3, 10), date(2024, 3, 25)],
            "last_seen": [date(2024, 3, 8), date(2024, 3, 12), date(2024, 3, 28)],
            "reasons": ["[]"] * 3,
            "evidence": ["[]"] * 3,
            "status": ["open"] * 3,
            "run_id": ["r1"] * 3,
        }
    )
    con.register("_f", flags.to_arrow())
    con.execute("INSERT INTO flags BY NAME SELECT * FROM _f")
    for i in range(1, 6):  # five registry terminals
        con.execute(
            "INSERT INTO terminals (terminal_id, merchant_id, serial_number, merchant_name, "
            "registered_mcc, registered_lat, registered_lon, region_code, terminal_kind, "
            "policy_id, trial_start, trial_end, status, updated_at, file_id, line_no) VALUES "
            "(?, '123456789012345', 's', 'm', '5411', 31.2, 121.5, '310000', 'fixed_pos', "
            "'default', DATE '2024-03-01', DATE '2024-03-31', 'active', ?, 'f', 1)",
            [f"T000000{i}", datetime(2024, 2, 1)],
        )
    con.execute(
        "INSERT INTO dispositions VALUES ('f1', 'confirmed', 'ana', NULL, ?, NULL)",
        [datetime(2024, 3, 9)],
    )
    con.close()


def test_evaluate_cli_json(tmp_path, capsys):
    db = tmp_path / "tg.duckdb"
    write_store(db)
    truth = tmp_path / "truth.csv"
    truth.write_text(
        "terminal_id,behaviour,start,end\n"
        "T0000001,card_compromise,2024-03-01,2024-03-10\n"
        "T0000002,fraud_hotspot,2024-03-20,2024-03-30\n"
    )
    assert cli_main(["--db", str(db), "evaluate", "--truth", str(truth), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    rows = {b["behaviour"]: b for b in r["behaviours"]}
    assert rows["card_compromise"]["f1"] == 1.0
    # fraud_hotspot: truth {T2}, flagged {T3, T2}: P 1/2, R 1
    assert rows["fraud_hotspot"]["precision"] == 0.5 and rows["fraud_hotspot"]["recall"] == 1.0
    assert r["clean"] == {"clean_terminals": 3, "clean_flagged": 1, "rate": 1 / 3}
    assert r["analyst"]["precision"] == 1.0

    # --to before T2's flag: the hotspot is missed, T3's false flag remains
    assert (
        cli_main(
            ["--db", str(db), "evaluate", "--truth", str(truth), "--json", "--to", "2024-03-20"]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    rows = {b["behaviour"]: b for b in r["behaviours"]}
    assert rows["fraud_hotspot"]["tp"] == 0 and rows["fraud_hotspot"]["fp"] == 1


def test_evaluate_cli_table_and_errors(tmp_path, capsys):
    db = tmp_path / "tg.duckdb"
    write_store(db)
    truth = tmp_path / "truth.csv"
    truth.write_text(
        "terminal_id,behaviour,start,end\nT0000001,card_compromise,2024-03-01,2024-03-10\n"
    )
    assert cli_main(["--db", str(db), "evaluate", "--truth", str(truth)]) == 0
    out = capsys.readouterr().out
    assert "card_compromise" in out and "macro F1" in out and "Precision@" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("terminal_id,behaviour\nT0000001,teleport\n")
    assert cli_main(["--db", str(db), "evaluate", "--truth", str(bad)]) == 2
    assert "unknown behaviours ['teleport']" in capsys.readouterr().err
