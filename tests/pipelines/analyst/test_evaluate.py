"""`trialguard evaluate` on a real DuckDB file."""

from __future__ import annotations

import argparse
import json
from datetime import date, datetime

import polars as pl

from pipelines.analyst import evaluate
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
    # days to flag, from the truth's start: T1 started 1 March, flagged 5 March
    assert rows["card_compromise"]["days_median"] == 4.0
    assert rows["card_compromise"]["days_max"] == 4

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
    bad.write_text("terminal_id,behaviour,start\nT0000001,card_compromise,1 March\n")
    assert cli_main(["--db", str(db), "evaluate", "--truth", str(bad)]) == 2
    assert "column start holds a value that is not a date" in capsys.readouterr().err


def test_evaluate_reports_the_labels_the_runs_had(tmp_path, capsys):
    """Fraud reports that arrived after the last run are counted and the way to include them named."""
    db = tmp_path / "tg.duckdb"
    write_store(db)
    truth = tmp_path / "truth.csv"
    truth.write_text("terminal_id,behaviour\nT0000001,card_compromise\n")
    args = ["--db", str(db), "evaluate", "--truth", str(truth)]

    assert cli_main(args) == 0
    assert "the store holds no fraud reports" in capsys.readouterr().out

    con = connect(db)
    for i, reported in enumerate(
        [datetime(2024, 3, 20, 9), datetime(2024, 3, 31, 23, 59), datetime(2024, 4, 15, 8)]
    ):
        con.execute(
            "INSERT INTO fraud_reports (report_id, card_token, fraud_time, reported_at, "
            "fraud_type, file_id, line_no) VALUES (?, 'tok', ?, ?, 'counterfeit', 'f', ?)",
            [f"R{i}", datetime(2024, 3, 10), reported, i + 1],
        )
    con.close()
    assert cli_main(args) == 0
    assert "no succeeded `trialguard run`" in capsys.readouterr().out

    con = connect(db)
    for run_id, as_of, status in [
        ("r1", date(2024, 3, 20), "succeeded"),
        ("r2", date(2024, 3, 31), "succeeded"),
        ("r3", date(2024, 4, 20), "failed"),  # a failed run saw nothing
    ]:
        con.execute(
            "INSERT INTO runs (run_id, command, as_of, started_at, status) "
            "VALUES (?, 'run', ?, ?, ?)",
            [run_id, as_of, datetime(2024, 5, 1), status],
        )
    con.close()
    assert cli_main([*args, "--json"]) == 0
    labels = json.loads(capsys.readouterr().out)["labels"]
    # the report of 31 March 23:59 was known by the end of the run date
    assert labels == {
        "to": None,
        "first_run": "2024-03-20",
        "last_run": "2024-03-31",
        "reports": 3,
        "after": 1,
        "last_reported": "2024-04-15",
    }
    assert cli_main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "1 of 3 fraud reports (33.3%) arrived after the last run (2024-03-31)" in out
    assert "trialguard run --from 2024-04-01 --to 2024-04-15" in out

    # evaluating flags up to 25 March: the runs up to then had seen one report of three
    assert cli_main([*args, "--to", "2024-03-25"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 of 3 fraud reports (66.7%) arrived after the last run (2024-03-20)" in out
    assert cli_main([*args, "--to", "2024-03-19"]) == 0
    assert "no succeeded `trialguard run` on or before 2024-03-19" in capsys.readouterr().out

    con = connect(db)
    con.execute(
        "INSERT INTO runs (run_id, command, as_of, started_at, status) "
        "VALUES ('r4', 'run', DATE '2024-04-15', TIMESTAMP '2024-05-01', 'succeeded')"
    )
    con.close()
    assert cli_main(args) == 0
    assert "all 3 fraud reports in the store were known by the last run (2024-04-15)" in (
        " ".join(capsys.readouterr().out.split())
    )
