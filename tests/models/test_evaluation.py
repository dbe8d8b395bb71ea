"""Evaluation metrics on a hand-made truth/flags example (numbers computed by hand)."""

from __future__ import annotations

from datetime import date, datetime

import polars as pl
import pytest

from models.evaluation import behaviour_metrics, days_to_flag, evaluate

# Terminals A..J. Truth: A, B relocation; C card_compromise; D cash_out.
TRUTH = pl.DataFrame(
    {
        "terminal_id": ["A", "B", "C", "D", "A"],  # A repeated (two episodes): counts once
        "behaviour": ["relocation", "relocation", "card_compromise", "cash_out", "relocation"],
    }
)
# Flags: A relocation 0.9 (TP), C relocation 0.5 (FP), C card_compromise 0.8 (TP),
# E card_compromise 0.7 (FP, E is clean), A relocation again 0.6 (same terminal).
FLAGS = pl.DataFrame(
    {
        "flag_id": ["f1", "f2", "f3", "f4", "f5"],
        "terminal_id": ["A", "C", "C", "E", "A"],
        "behaviour": [
            "relocation",
            "relocation",
            "card_compromise",
            "card_compromise",
            "relocation",
        ],
        "score": [0.9, 0.5, 0.8, 0.7, 0.6],
    }
)
TERMINALS = list("ABCDEFGHIJ")


def test_per_behaviour_metrics_by_hand():
    m = {r["behaviour"]: r for r in behaviour_metrics(TRUTH, FLAGS).iter_rows(named=True)}
    # relocation: truth {A,B}, flagged {A,C}: TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 1/2
    assert (m["relocation"]["tp"], m["relocation"]["fp"], m["relocation"]["fn"]) == (1, 1, 1)
    assert m["relocation"]["f1"] == pytest.approx(0.5)
    # card_compromise: truth {C}, flagged {C,E}: P 1/2, R 1, F1 = 2*(1/2)/(3/2) = 2/3
    assert m["card_compromise"]["precision"] == pytest.approx(0.5)
    assert m["card_compromise"]["recall"] == pytest.approx(1.0)
    assert m["card_compromise"]["f1"] == pytest.approx(2 / 3)
    # cash_out: truth {D}, nothing flagged: precision undefined, recall 0, F1 0
    assert m["cash_out"]["precision"] is None
    assert m["cash_out"]["recall"] == 0.0 and m["cash_out"]["f1"] == 0.0


def test_summary_by_hand():
    dispositions = pl.DataFrame(
        {
            "flag_id": ["f1", "f2", "f2", "f3", "f4"],
            "decision": ["confirmed", "dismissed", "confirmed", "snoozed", "dismissed"],
            "decided_at": [datetime(2024, 3, d) for d in (1, 1, 2, 1, 1)],
        }
    )
    r = evaluate(TRUTH, FLAGS, TERMINALS, dispositions, ks=(1, 2))
    # macro F1 over relocation, card_compromise, cash_out: (1/2 + 2/3 + 0) / 3 = 7/18
    assert r["macro_f1"] == pytest.approx(7 / 18)
    # clean: E..J (6 terminals); E is flagged -> 1/6
    assert r["clean"] == {"clean_terminals": 6, "clean_flagged": 1, "rate": pytest.approx(1 / 6)}
    # ranking by max score: A 0.9, C 0.8, E 0.7. k = 4 truth terminals -> top 3 exist: 2/3
    pk = {p["k"]: p for p in r["precision_at_k"]}
    assert sorted(pk) == [1, 2, 4]
    assert pk[1]["precision"] == 1.0 and pk[2]["precision"] == 1.0
    assert (pk[4]["n"], pk[4]["hits"]) == (3, 2)
    # latest decisions: f1 confirmed, f2 confirmed (after dismissed), f4 dismissed; f3 snoozed
    assert r["analyst"] == {"confirmed": 2, "dismissed": 1, "precision": pytest.approx(2 / 3)}


def d(day: int) -> date:
    return date(2025, 9, day)


def test_days_to_flag_by_hand():
    truth = pl.DataFrame(
        {
            "terminal_id": ["A", "A", "B", "C", "D", "E"],
            "behaviour": ["relocation"] * 4 + ["cash_out", "cash_out"],
            # A: two episodes, the second found first; E: dated before the runs (clock)
            "start": [d(2), d(10), d(5), d(8), d(3), date(2000, 1, 1)],
        }
    )
    flags = pl.DataFrame(
        {
            "terminal_id": ["A", "B", "B", "E"],
            "behaviour": ["relocation", "relocation", "relocation", "cash_out"],
            "first_seen": [d(11), d(1), d(9), d(4)],
            "last_seen": [d(12), d(3), d(9), d(4)],  # B's first flag ended before its start
        }
    )
    out = {r["behaviour"]: r for r in days_to_flag(truth, flags).iter_rows(named=True)}
    # A: episode 2 -> 11 - 2 = 9, episode 10 -> 1: the earliest-found counts (1);
    # B: 9 - 5 = 4; C never flagged
    assert out["relocation"] == {
        "behaviour": "relocation",
        "n_timed": 2,
        "days_median": 2.5,
        "days_max": 4,
    }
    # E's episode of the year 2000 is timed without a window (9,378 days) ...
    assert out["cash_out"]["days_max"] == (d(4) - date(2000, 1, 1)).days
    # ... and left out with the runs' dates; D was never flagged
    windowed = days_to_flag(truth, flags, (d(1), d(30)))
    row = windowed.filter(pl.col("behaviour") == "cash_out").row(0, named=True)
    assert row["n_timed"] == 0 and row["days_median"] is None
    # evaluate adds the two columns when truth has a start and flags have their dates
    scored = flags.with_columns(pl.lit(0.9).alias("score"))
    r = evaluate(truth, scored, list("ABCDEF"), window=(d(1), d(30)))
    rows = {b["behaviour"]: b for b in r["behaviours"]}
    assert rows["relocation"]["days_median"] == 2.5 and rows["relocation"]["days_max"] == 4
    assert "days_median" not in evaluate(TRUTH, FLAGS, TERMINALS)["behaviours"][0]
