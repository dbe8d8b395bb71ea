"""Card testing by incrementing PANs (domain §1 #7 "consecutive or incrementing last-4").

A rig enumerating a PAN range tries same-BIN cards in number order; the Luhn
check digit makes the last4 steps uneven, so the constant-step test misses it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl

from features.card_runs import incrementing_cards
from features.daily import terminal_day
from features.policy import policy_frame
from features.transactions import enrich_transactions
from models.config import load_config
from models.rules.engine import detect

_path = Path(__file__).parents[2] / "features" / "_frames.py"
_spec = importlib.util.spec_from_file_location("_frames", _path)
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

CFG = load_config()
# Uneven steps (16, 25, 16, 26, ...): account number + 1 with a changing check digit.
RISING = [5001, 5027, 5043, 5068, 5084, 5100, 5126, 5142, 5167]
PROBES = {
    # A slow probe: one card every 8 minutes, so no hour holds 10 distinct cards
    # and the card-burst check cannot fire; small amounts, some declined.
    "step_s": 480,
    "card_bin": "625965",
    "amount_minor": [1493, 1868, 501, 1277, 1197, 865, 103, 911, 885],
    "response_code": ["00", "00", "00", "51", "05", "00", "00", "05", "00"],
}


def run(txns: pl.DataFrame) -> tuple[dict, pl.DataFrame]:
    registry = F.registry([*txns.get_column("terminal_id").unique()])
    pol = policy_frame({}, CFG["default_policy"])
    day = terminal_day(enrich_transactions(txns.lazy(), registry.lazy(), pol, CFG), CFG)
    day = day.with_columns(pl.lit(0, dtype=pl.Int64).alias("n_implausible_time")).collect()
    return day.row(0, named=True), detect(day.lazy(), CFG).collect()


def probes(last4: list[int], **overrides) -> pl.DataFrame:
    kw = {**PROBES, **overrides}
    kw["amount_minor"] = kw["amount_minor"][: len(last4)]
    kw["response_code"] = kw["response_code"][: len(last4)]
    return F.txns(len(last4), card_last4=[f"{x:04d}" for x in last4], **kw)


def test_rising_last4_in_order_of_use_is_card_testing():
    day, det = run(probes(RISING))
    assert day["testing_cards"] is None  # the hourly burst test does not see it
    assert day["n_sequential_cards"] == len(RISING)
    row = det.filter(pl.col("behaviour") == "card_testing").row(0, named=True)
    assert [r["code"] for r in row["reasons"]] == ["sequential_cards"]
    assert "rising by 1 to 100 in order of use" in row["reasons"][0]["text"]
    assert len(row["evidence"]) == len(RISING)


def test_same_cards_in_shuffled_order_are_not_card_testing():
    shuffled = [5100, 5027, 5142, 5001, 5084, 5167, 5043, 5126, 5068]
    day, det = run(probes(shuffled))
    assert day["n_sequential_cards"] == 0
    assert "card_testing" not in set(det["behaviour"])


def test_a_run_shorter_than_the_minimum_is_chance():
    short = RISING[: int(CFG["card_testing"]["min_incrementing_run"]) - 1]
    day, det = run(probes(short))
    assert day["n_sequential_cards"] == 0
    assert "card_testing" not in set(det["behaviour"])


def test_large_steps_are_not_a_run():
    step = int(CFG["card_testing"]["max_last4_step"]) + 1
    day, _ = run(probes([1000 + step * i for i in range(9)]))
    assert day["n_sequential_cards"] == 0


def test_run_needs_one_bin_and_uses_within_the_window():
    lf = probes(RISING).lazy()
    cfg = CFG["card_testing"]
    assert incrementing_cards(lf, cfg).collect()["incrementing_card"].all()
    # Other BINs' cards in between do not break a BIN's run (5 of 9 cards here)...
    mixed = lf.with_columns(pl.Series("card_bin", ["625965", "621700"] * 4 + ["625965"]))
    got = incrementing_cards(mixed, cfg).collect()
    assert got.filter(pl.col("incrementing_card"))["card_bin"].unique().to_list() == ["625965"]
    # ...but three BINs of 3 cards each hold no run of 5.
    bins = ["625965", "625965", "621700", "621700", "622202", "622202"]
    three = lf.with_columns(pl.Series("card_bin", [*bins, "625965", "621700", "622202"]))
    assert not incrementing_cards(three, cfg).collect()["incrementing_card"].any()
    slow = probes(RISING, step_s=int(cfg["window_s"]) + 60).lazy()
    assert not incrementing_cards(slow, cfg).collect()["incrementing_card"].any()
