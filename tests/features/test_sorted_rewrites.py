"""Sort-based sequence features equal their ``over()`` window formulations row for row.

The per-terminal step replaces hash windows by shifts masked where the terminal
changes, run ids and one narrow sort (issue 4). The references below are the
window formulations they replaced; the data have many repeats, ties and nulls.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from features.card_runs import (
    _card_rows,
    card_runs,
    card_testing_windows,
    incrementing_cards,
    sequential_cards,
)
from features.daily import _agg_terminal_days
from features.sequences import (
    cell_back_switch,
    hop_km,
    hop_speed_kmh,
    ip_back_switch,
    mcc_switch,
    serial_back_switch,
    serial_switch,
    stan_out_of_order,
    with_hops,
)
from features.splits import (
    _same_as_row_above,
    cap_breaches_and_round_splits,
    daily_cap_breaches,
    round_splits,
)
from models.config import load_config

CFG = load_config()


def rows(seed: int, n: int = 3000) -> pl.DataFrame:
    """Rows sorted by (terminal, time) over two days, few values so that repeats are common."""
    rng = np.random.default_rng(seed)
    term = np.sort(rng.integers(0, 25, n))
    secs = rng.integers(0, 2 * 86400 // 300, n) * 300
    order = np.lexsort((np.arange(n), secs, term))
    term, secs = term[order], secs[order]

    def pick(values, p=None):
        return pl.Series(rng.choice(np.array(values, dtype=object), n, p=p).tolist())

    t0 = datetime(2026, 3, 1)
    times = [t0 + timedelta(seconds=int(s)) for s in secs]
    return pl.DataFrame(
        {
            "terminal_id": [f"T{x:03d}" for x in term],
            "txn_time": times,
            "local_date": [t.date() for t in times],
            "device_serial": pick(["A", "B", None], [0.7, 0.2, 0.1]),
            "ip_address": pick(["1", "2", "3", None]),
            "cell_id": pick(["c1", "c2", None]),
            "mcc": pick(["5411", "5812", None], [0.8, 0.15, 0.05]),
            "stan": pick(["000010", "000005", "999990", "000001", "x", None]),
            "card_token": pick(["k1", "k2", "k3", "k4", None]),
            "card_bin": pick(["622202", "622848", None], [0.6, 0.3, 0.1]),
            "card_last4": pick(["0001", "0003", "0005", "0007", "0010", "abcd", None]),
            "cap_txn": pl.Series(rng.random(n) < 0.8).set(pl.Series(rng.random(n) < 0.05), None),
            "approved": rng.random(n) < 0.6,
            "amount_minor": rng.integers(1, 5, n) * 1000,
            "max_daily_amount_minor": rng.choice([20_000, 50_000], n),
            "max_daily_txn_count": rng.choice([10, 30], n),
            "max_same_card_per_day": pl.Series(rng.choice([2, 5], n)).set(
                pl.Series(rng.random(n) < 0.05), None
            ),
        }
    )


def _switches_over(col: str) -> tuple[pl.Expr, pl.Expr]:
    v = pl.col(col).forward_fill().over("terminal_id")
    prev = v.shift(1).over("terminal_id")
    switch = (v != prev).fill_null(False) & pl.col(col).is_not_null()
    run_prev = pl.when(v != prev).then(prev).otherwise(None).forward_fill().over("terminal_id")
    back = switch & (v == run_prev.shift(1).over("terminal_id")).fill_null(False)
    return switch, back


def _sequential_over(lf: pl.LazyFrame, cfg) -> pl.LazyFrame:
    keys = ["terminal_id", "local_date", "card_bin"]
    cards = (
        lf.filter(pl.col("card_bin").is_not_null() & pl.col("card_last4").is_not_null())
        .group_by("terminal_id", "local_date", "card_bin", "card_last4")
        .agg(pl.col("txn_time").min().alias("first_t"))
        .with_columns(pl.col("card_last4").cast(pl.Int64, strict=False).alias("l4"))
        .sort("terminal_id", "local_date", "card_bin", "l4")
    )
    cards = cards.with_columns((pl.col("l4") - pl.col("l4").shift(1).over(keys)).alias("gap"))
    t = pl.col("first_t").dt.epoch("s")
    span = pl.max_horizontal(t, t.shift(1).over(keys), t.shift(2).over(keys)) - pl.min_horizontal(
        t, t.shift(1).over(keys), t.shift(2).over(keys)
    )
    run_end = (
        (pl.col("gap") == pl.col("gap").shift(1).over(keys))
        & (pl.col("gap") >= 1)
        & (pl.col("gap") <= int(cfg["max_last4_gap"]))
        & (span <= int(cfg["window_s"]))
    ).fill_null(False)
    cards = cards.with_columns(run_end.alias("run_end"))
    member = (
        pl.col("run_end")
        | pl.col("run_end").shift(-1).over(keys).fill_null(False)
        | pl.col("run_end").shift(-2).over(keys).fill_null(False)
    )
    cards = cards.with_columns(member.alias("sequential_card")).select(
        "terminal_id", "local_date", "card_bin", "card_last4", "sequential_card"
    )
    out = lf.join(
        cards,
        on=["terminal_id", "local_date", "card_bin", "card_last4"],
        how="left",
        maintain_order="left",
    )
    return out.with_columns(pl.col("sequential_card").fill_null(False))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_shifts_equal_terminal_windows(seed):
    df = rows(seed)
    got = df.with_columns(
        serial_switch(),
        serial_back_switch(),
        ip_back_switch(),
        cell_back_switch(),
        mcc_switch(),
        stan_out_of_order(),
    )
    s = pl.col("stan").cast(pl.Int64, strict=False)
    prev = s.shift(1).over("terminal_id")
    want = df.with_columns(
        _switches_over("device_serial")[0].alias("serial_switch"),
        _switches_over("device_serial")[1].alias("serial_back_switch"),
        _switches_over("ip_address")[1].alias("ip_back_switch"),
        _switches_over("cell_id")[1].alias("cell_back_switch"),
        (pl.col("mcc") != pl.col("mcc").shift(1).over("terminal_id"))
        .fill_null(False)
        .alias("mcc_switch"),
        ((s < prev) & ((prev - s) < 900_000)).fill_null(False).alias("stan_out_of_order"),
    )
    for c in ("serial_switch", "serial_back_switch", "ip_back_switch", "mcc_switch"):
        assert 0 < want[c].sum() < df.height, c  # both outcomes occur
    assert got.equals(want)


@pytest.mark.parametrize("seed", [0, 1])
def test_sequential_cards_equal_the_grouped_formulation(seed):
    df = rows(seed)
    cfg = {**CFG["card_testing"], "max_last4_gap": 2, "window_s": 86400}
    got = sequential_cards(df.lazy(), cfg).collect()
    want = _sequential_over(df.lazy(), cfg).collect()
    assert 0 < want["sequential_card"].sum() < df.height
    assert got.equals(want)


@pytest.mark.parametrize("seed", [0, 1])
def test_daily_caps_equal_the_window_formulation(seed):
    df = rows(seed)
    day = ["terminal_id", "local_date"]
    cap = pl.col("cap_txn")
    cum_card = cap.cast(pl.Int64).cum_sum().over([*day, "card_token"])
    cum_amount = pl.when(cap).then(pl.col("amount_minor")).otherwise(0).cum_sum().over(day)
    want = df.with_columns(
        (cap & (cum_amount > pl.col("max_daily_amount_minor")))
        .fill_null(False)
        .alias("over_daily_amount"),
        (cap & (cap.cast(pl.Int64).cum_sum().over(day) > pl.col("max_daily_txn_count")))
        .fill_null(False)
        .alias("over_daily_count"),
        (cap & pl.col("card_token").is_not_null() & (cum_card > pl.col("max_same_card_per_day")))
        .fill_null(False)
        .alias("over_same_card"),
    )
    got = daily_cap_breaches(df.lazy()).collect()
    assert 0 < want["over_same_card"].sum() < df.height
    assert got.equals(want)


def _round_splits_over(lf: pl.LazyFrame, window_s: int, round_minor: int) -> pl.LazyFrame:
    """The window formulation :func:`round_splits` replaced (one hash group per card)."""
    keys = ["terminal_id", "local_date", "card_token", "cap_txn"]
    eligible = (
        pl.col("cap_txn") & pl.col("card_token").is_not_null() & pl.col("txn_time").is_not_null()
    )
    gap = (pl.col("txn_time") - pl.col("txn_time").shift(1).over(keys)).dt.total_seconds()
    lf = lf.with_columns(
        (gap > window_s).fill_null(True).cum_sum().over(keys).alias("_rs_session")
    )
    session = [*keys, "_rs_session"]
    amount = pl.col("amount_minor")
    split = (
        eligible
        & (pl.len().over(session) >= 2)
        & (amount.sum().over(session) % round_minor == 0)
        & ~(amount % round_minor == 0).all().over(session)
    ).fill_null(False)
    first = pl.int_range(pl.len()).over(session) == 0
    return lf.with_columns(
        split.alias("round_split"), (split & first).alias("round_split_start")
    ).drop("_rs_session")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_splits_equal_the_window_formulation(seed):
    rng = np.random.default_rng(seed)
    df = rows(seed)
    # Missing times and amounts in the middle of a card's sales break / join sessions.
    df = df.with_columns(
        df["txn_time"].set(pl.Series(rng.random(df.height) < 0.03), None),
        df["amount_minor"].set(pl.Series(rng.random(df.height) < 0.03), None),
    )
    # A 2-hour window: sessions of several sales, some spanning a row without a time.
    got = round_splits(df.lazy(), 7200, 2000).collect()
    want = _round_splits_over(df.lazy(), 7200, 2000).collect()
    assert 0 < want["round_split_start"].sum() < want["round_split"].sum() < df.height
    assert got.equals(want)
    # Both per-card signals from one sort of the card sales: as one after the other.
    both = cap_breaches_and_round_splits(df.lazy(), 7200, 2000).collect()
    assert both.equals(round_splits(daily_cap_breaches(df.lazy()), 7200, 2000).collect())


def _incrementing_grouped(lf: pl.LazyFrame, cfg) -> pl.LazyFrame:
    """The formulation :func:`incrementing_cards` replaced (a group-by and a string semi join)."""
    keys = ["_term", "local_date", "card_bin"]
    lf = lf.with_row_index("_inc_row")
    rows = _card_rows(lf, "_inc_row").filter(
        pl.col("card_bin").is_not_null()
        & pl.col("l4").is_not_null()
        & pl.col("txn_time").is_not_null()
    )
    cards = (
        rows.group_by(*keys, "card_last4")
        .agg(pl.col("l4").first(), pl.col("txn_time").min().alias("first_t"))
        .sort(*keys, "first_t", "l4")
    )
    same = _same_as_row_above(keys, 1)
    step = pl.col("l4") - pl.col("l4").shift(1)
    dt = pl.col("first_t").dt.epoch("s") - pl.col("first_t").dt.epoch("s").shift(1)
    linked = (
        same & (step >= 1) & (step <= int(cfg["max_last4_step"])) & (dt <= int(cfg["window_s"]))
    ).fill_null(False)
    in_run = (
        cards.with_columns((~linked).cum_sum().alias("_run"))
        .filter(pl.len().over("_run") >= int(cfg["min_incrementing_run"]))
        .select(*keys, "card_last4")
    )
    hits = rows.join(in_run, on=[*keys, "card_last4"], how="semi").select(
        "_inc_row", pl.lit(True).alias("incrementing_card")
    )
    out = lf.join(hits, on="_inc_row", how="left", maintain_order="left")
    return out.with_columns(pl.col("incrementing_card").fill_null(False)).drop("_inc_row")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_card_runs_equal_the_grouped_formulations(seed):
    rng = np.random.default_rng(seed)
    # Distinct first-use times per card (the old sort left ties in group-by order),
    # some missing; last4 values rising by 2 with a few non-numeric or missing.
    df = rows(seed).with_columns(
        pl.Series(
            "card_last4",
            rng.choice(np.array([f"{x:04d}" for x in range(1, 40, 2)] + ["abcd", None]), 3000),
        )
    )
    df = df.with_columns(
        (pl.col("txn_time") + pl.duration(seconds=pl.int_range(pl.len()))).alias("txn_time")
    )
    df = df.with_columns(df["txn_time"].set(pl.Series(rng.random(df.height) < 0.03), None))
    cfg = {
        **CFG["card_testing"],
        "max_last4_gap": 2,
        "max_last4_step": 4,
        "min_incrementing_run": 3,
        "window_s": 86400,
    }
    seq = _sequential_over(df.lazy(), cfg).collect()
    inc = _incrementing_grouped(df.lazy(), cfg).collect()
    assert 0 < inc["incrementing_card"].sum() < df.height
    assert sequential_cards(df.lazy(), cfg).collect().equals(seq)
    assert incrementing_cards(df.lazy(), cfg).collect().equals(inc)
    both = card_runs(df.lazy(), cfg).collect()
    assert both.equals(seq.with_columns(inc["incrementing_card"]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernel_hops_equal_the_device_windows(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    df = rows(seed)
    n = df.height
    lat = pl.Series(31.0 + rng.random(n)).set(pl.Series(rng.random(n) < 0.2), None)
    df = df.with_columns(
        lat.alias("terminal_lat"),
        pl.Series(121.0 + rng.random(n))
        .set(pl.Series(rng.random(n) < 0.1), None)
        .alias("terminal_lon"),
        # located rows without a time: the window skips them when looking for a time
        df["txn_time"].set(pl.Series(rng.random(n) < 0.05), None),
    )
    got = with_hops(df)
    want = df.with_columns(hop_km()).with_columns(hop_speed_kmh())
    assert want["hop_speed_kmh"].is_not_null().sum() > n // 2
    assert want["device_serial"].null_count() > 0  # serial-less rows are one "device"
    assert got.equals(want)
    assert with_hops(df.head(0)).equals(want.head(0))
    # Every serial hashing alike (a collision): the pointers fail the check, windows are used.
    monkeypatch.setattr(
        "features.sequences._value_codes", lambda v: np.zeros(len(v), dtype=np.int64)
    )
    assert with_hops(df).equals(want)


def test_card_testing_windows_equal_the_grouped_formulation():
    df = rows(3).with_columns(pl.col("amount_minor") // 100)
    cfg = {**CFG["card_testing"], "min_distinct_cards": 2, "decline_rate": 0.2}
    got = card_testing_windows(df.lazy(), cfg).collect()
    w = int(cfg["window_s"])
    want = df
    for off, tag in ((0, "a"), (w // 2, "b")):
        b = ((pl.col("txn_time").dt.epoch("s") + off) // w).alias("bk")
        stats = (
            want.with_columns(b)
            .group_by("terminal_id", "bk")
            .agg(
                pl.col("card_token").n_unique().alias(f"c_{tag}"),
                (~pl.col("approved")).mean().alias(f"d_{tag}"),
            )
        )
        want = (
            want.with_columns(b)
            .join(stats, on=["terminal_id", "bk"], how="left", maintain_order="left")
            .drop("bk")
        )
    assert (
        got["window_cards"].to_list()
        == want.select(pl.max_horizontal("c_a", "c_b")).to_series().to_list()
    )
    assert 0 < got["testing_like"].sum() < df.height


def test_rows_fixture_is_sorted_and_spans_two_days():
    df = rows(0)
    assert df.equals(df.sort("terminal_id", "txn_time", maintain_order=True))
    assert df["local_date"].unique().to_list() == [date(2026, 3, 1), date(2026, 3, 2)]


def _day_aggs() -> list[pl.Expr]:
    # order-dependent aggregations (first, head, cumulative) and null-sensitive ones
    return [
        pl.col("txn_time").first().alias("first_t"),
        pl.col("card_token").head(3).alias("cards"),
        pl.col("amount_minor").cum_sum().last().alias("total"),
        pl.col("stan").drop_nulls().first().alias("stan"),
        pl.col("card_token").n_unique().alias("n_cards"),
        pl.len().alias("n"),
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_terminal_day_groups_by_run_equal_the_string_keys(seed):
    df = rows(seed)
    got = _agg_terminal_days(df.lazy(), *_day_aggs()).collect()
    want = df.group_by("terminal_id", "local_date").agg(*_day_aggs())
    assert got.columns == want.columns
    assert got.equals(want.sort("terminal_id", "local_date"))  # and in run order


def test_terminal_day_groups_with_interleaved_days_fall_back_to_the_string_keys():
    # a terminal's days interleave (rows without a time sorted first): runs are not groups
    df = rows(4)
    df = pl.concat([df.filter(pl.col("local_date") == pl.col("local_date").max()).head(5), df])
    got = _agg_terminal_days(df.lazy(), *_day_aggs()).collect()
    want = df.group_by("terminal_id", "local_date").agg(*_day_aggs())
    key = ["terminal_id", "local_date"]
    assert got.sort(key).equals(want.sort(key))
    assert got.height == df.select(pl.struct(key).n_unique()).item()
