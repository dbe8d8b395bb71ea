"""Per terminal per local day: aggregates (stored in ``terminal_day``) and evidence lists.

:func:`terminal_day` turns enriched transactions (:func:`features.transactions.
enrich_transactions`) into one row per terminal and local day. Its numeric
columns (:data:`AGGREGATE_COLUMNS`) are what the ``terminal_day`` table stores,
so 7- and 30-day features read compact aggregates instead of raw history;
``ev_<behaviour>`` list columns (up to 50 txn_ids each, in time order) are the
evidence rules cite and are not stored.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from features.schema import MAX_EVIDENCE, POLARS_TYPES, TERMINAL_DAY_AGGREGATES

#: Registry / peer-group attributes carried per terminal-day (first value of the day).
ATTRIBUTE_COLUMNS: dict[str, pl.DataType] = {
    "merchant_id": pl.String(),
    "registered_mcc": pl.String(),
    "region_code": pl.String(),
    "terminal_kind": pl.String(),
    "policy_key": pl.String(),
}

#: Numeric aggregates stored in ``terminal_day`` (name -> polars type).
AGGREGATE_COLUMNS: dict[str, pl.DataType] = {
    name: POLARS_TYPES[dtype]
    for name, dtype in TERMINAL_DAY_AGGREGATES.items()
    if name != "n_implausible_time"  # counted by the run step (needs other days' files)
}

#: Behaviours whose evidence comes from per-transaction flags.
EVIDENCE_BEHAVIOURS: tuple[str, ...] = (
    "relocation",
    "cloned_terminal",
    "mcc_mismatch",
    "cash_out",
    "card_testing",
    "fallback_abuse",
    "unregistered_use",
    "trial_limit_breach",
    "disallowed_use",
    "malfunction",
)


def _window_flags(lf: pl.LazyFrame, cfg: dict[str, Any], offset_s: int, tag: str) -> pl.LazyFrame:
    """Card-testing stats per fixed window (shifted by ``offset_s``) on each row.

    Rows must be sorted by (terminal_id, txn_time), as :func:`terminal_day` gets them.
    """
    w = int(cfg["window_s"])
    bucket = (pl.col("txn_time").dt.epoch("s") + offset_s) // w
    # Rows are sorted by (terminal, time), so each (terminal, window) is a run of
    # rows: a run id is a cheap integer window key (no string group-by and join).
    lf = lf.with_columns(pl.struct(pl.col("terminal_id"), bucket).rle_id().alias(f"bucket_{tag}"))
    key = pl.col(f"bucket_{tag}")
    timed = pl.col("txn_time").is_not_null()  # rows without a time are in no window
    lf = lf.with_columns(
        pl.when(timed).then(pl.col("card_token").n_unique().over(key)).alias(f"wcards_{tag}"),
        pl.when(timed).then((~pl.col("approved")).mean().over(key)).alias(f"wdecl_{tag}"),
        pl.when(timed).then(pl.col("amount_minor").median().over(key)).alias(f"wmed_{tag}"),
    )
    hit = (
        (pl.col(f"wcards_{tag}") >= int(cfg["min_distinct_cards"]))
        & (pl.col(f"wdecl_{tag}") > float(cfg["decline_rate"]))
        & (pl.col(f"wmed_{tag}") < float(cfg["max_median_amount_minor"]))
    )
    # "testing-like": many cards and many declines whatever the amounts; reads in
    # such a window are probes, not fallback abuse.
    like = (pl.col(f"wcards_{tag}") >= int(cfg["min_distinct_cards"])) & (
        pl.col(f"wdecl_{tag}") > float(cfg["decline_rate"])
    )
    return lf.with_columns(hit.alias(f"whit_{tag}"), like.alias(f"wlike_{tag}"))


def card_testing_windows(lf: pl.LazyFrame, cfg: dict[str, Any]) -> pl.LazyFrame:
    """Mark rows inside a card-testing window (two staggered grids of ``window_s``)."""
    half = int(cfg["window_s"]) // 2
    lf = _window_flags(_window_flags(lf, cfg, 0, "a"), cfg, half, "b")
    hit_a, hit_b = pl.col("whit_a"), pl.col("whit_b")
    return lf.with_columns(
        (hit_a | hit_b).alias("testing_window"),
        (pl.col("wlike_a") | pl.col("wlike_b")).fill_null(False).alias("testing_like"),
        pl.max_horizontal("wcards_a", "wcards_b").alias("window_cards"),
        pl.when(hit_a & hit_b)
        .then(pl.max_horizontal("wcards_a", "wcards_b"))
        .when(hit_a)
        .then(pl.col("wcards_a"))
        .when(hit_b)
        .then(pl.col("wcards_b"))
        .alias("testing_cards_row"),
        pl.when(hit_a)
        .then(pl.col("wdecl_a"))
        .when(hit_b)
        .then(pl.col("wdecl_b"))
        .alias("testing_decl_row"),
        pl.when(hit_a)
        .then(pl.col("wmed_a"))
        .when(hit_b)
        .then(pl.col("wmed_b"))
        .alias("testing_med_row"),
    ).drop(
        "bucket_a",
        "bucket_b",
        "wcards_a",
        "wcards_b",
        "wdecl_a",
        "wdecl_b",
        "wmed_a",
        "wmed_b",
        "whit_a",
        "whit_b",
        "wlike_a",
        "wlike_b",
    )


def _same_as_row_above(keys: list[str], k: int) -> pl.Expr:
    """The row ``k`` rows up has the same ``keys`` (a group's rows are contiguous)."""
    return pl.all_horizontal(
        *[pl.col(c).eq_missing(pl.col(c).shift(k)) for c in keys],
        pl.int_range(pl.len(), dtype=pl.Int64) >= k,
    )


def _card_rows(lf: pl.LazyFrame, row: str) -> pl.LazyFrame:
    """The narrow card columns of each row, with ``row`` (its index) and ``l4`` (last 4 as int).

    ``_term`` is terminal_id's rank among the (sorted) rows: a cheap integer sort key.
    """
    return lf.select(
        row,
        pl.col("terminal_id").rle_id().alias("_term"),
        "local_date",
        "card_bin",
        "card_last4",
        "txn_time",
        pl.col("card_last4").cast(pl.Int64, strict=False).alias("l4"),
    )


def sequential_cards(lf: pl.LazyFrame, cfg: dict[str, Any]) -> pl.LazyFrame:
    """Mark rows whose card is in a run of 3 same-BIN cards with a constant small last4 step.

    The three cards' first uses at the terminal that day must fall within ``window_s``.

    Rows must be sorted by terminal (as :func:`terminal_day` gets them). One sort
    of the narrow card columns by (terminal, day, BIN, last4, time) puts each
    card's rows together, its first use first; only the rows of cards in a run
    are joined back (by row number), so the wide rows are neither grouped nor
    joined on strings.
    """
    card = ["_term", "local_date", "card_bin", "card_last4"]
    keys = ["_term", "local_date", "card_bin"]
    lf = lf.with_row_index("_seq_row")
    rows = (
        _card_rows(lf, "_seq_row")
        .filter(pl.col("card_bin").is_not_null() & pl.col("card_last4").is_not_null())
        .sort(
            "_term",
            "local_date",
            "card_bin",
            "l4",
            "card_last4",
            "txn_time",
            nulls_last=[False, False, False, False, False, True],
        )
        .with_columns((~_same_as_row_above(card, 1)).cum_sum().alias("_card"))
    )
    # One row per card: its first use (time sorted, missing times last).
    cards = rows.filter(~_same_as_row_above(card, 1)).select(
        "_card", *keys, "l4", pl.col("txn_time").alias("first_t")
    )
    # The cards are sorted by ``keys``, so ``shift(k).over(keys)`` is a shift
    # masked where the group changes.
    same = [_same_as_row_above(keys, k) for k in (1, 2)]

    def shift(e: pl.Expr, k: int) -> pl.Expr:
        return pl.when(same[k - 1]).then(e.shift(k))

    gap = pl.col("l4") - shift(pl.col("l4"), 1)
    cards = cards.with_columns(gap.alias("gap"))
    t = pl.col("first_t").dt.epoch("s")
    span = pl.max_horizontal(t, shift(t, 1), shift(t, 2)) - pl.min_horizontal(
        t, shift(t, 1), shift(t, 2)
    )
    run_end = (
        (pl.col("gap") == shift(pl.col("gap"), 1))
        & (pl.col("gap") >= 1)
        & (pl.col("gap") <= int(cfg["max_last4_gap"]))
        & (span <= int(cfg["window_s"]))
    ).fill_null(False)
    cards = cards.with_columns(run_end.alias("run_end"))
    # The row k rows down is in the same group when its "same as k rows up" holds.
    member = (
        pl.col("run_end")
        | (same[0].shift(-1) & pl.col("run_end").shift(-1)).fill_null(False)
        | (same[1].shift(-2) & pl.col("run_end").shift(-2)).fill_null(False)
    )
    in_run = cards.filter(member).select("_card")
    hits = rows.join(in_run, on="_card", how="semi").select(
        "_seq_row", pl.lit(True).alias("sequential_card")
    )
    out = lf.join(hits, on="_seq_row", how="left", maintain_order="left")
    return out.with_columns(pl.col("sequential_card").fill_null(False)).drop("_seq_row")


def incrementing_cards(lf: pl.LazyFrame, cfg: dict[str, Any]) -> pl.LazyFrame:
    """Mark rows whose card is in a run of same-BIN cards whose last4 rise in order of use.

    Domain §1 #7: "sequential PANs: same BIN with consecutive or *incrementing*
    last-4". A rig that enumerates a PAN range tries the cards in number order;
    the Luhn check digit (the last digit) makes the last4 steps uneven, so the
    constant-step test of :func:`sequential_cards` misses it. Here the terminal's
    same-BIN cards of a day are taken in order of first use; a run is a chain of
    consecutive cards each with a last4 above the previous one by 1 to
    ``max_last4_step`` and first used within ``window_s`` of it. Rows of cards in
    runs of at least ``min_incrementing_run`` cards get ``incrementing_card``.

    Rows must be sorted by terminal (as :func:`terminal_day` gets them).
    """
    keys = ["_term", "local_date", "card_bin"]
    lf = lf.with_row_index("_inc_row")
    rows = _card_rows(lf, "_inc_row").filter(
        pl.col("card_bin").is_not_null()
        & pl.col("l4").is_not_null()
        & pl.col("txn_time").is_not_null()
    )
    # One row per card (its first use), in order of first use within (terminal, day, BIN).
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
    run = (~linked).cum_sum()
    in_run = (
        cards.with_columns(run.alias("_run"))
        .filter(pl.len().over("_run") >= int(cfg["min_incrementing_run"]))
        .select(*keys, "card_last4")
    )
    hits = rows.join(in_run, on=[*keys, "card_last4"], how="semi").select(
        "_inc_row", pl.lit(True).alias("incrementing_card")
    )
    out = lf.join(hits, on="_inc_row", how="left", maintain_order="left")
    return out.with_columns(pl.col("incrementing_card").fill_null(False)).drop("_inc_row")


def round_splits(lf: pl.LazyFrame, window_s: int, round_minor: int) -> pl.LazyFrame:
    """Mark approved sales of one card that together make a round figure (a split sale).

    Domain §1 #5: "Split transactions (拆单): same card, same terminal, short
    interval, summing to a round figure". A card's approved cap-counting sales
    of the day form a session while each follows the previous one within
    ``window_s``; a session of at least two sales whose total is a multiple of
    ``round_minor`` while not every sale is itself round (round pieces are the
    round-amount indicator already) is a round split. Adds ``round_split`` (row
    in such a session) and ``round_split_start`` (its first row: one per session).

    Rows must be sorted by (terminal_id, txn_time), as :func:`terminal_day` gets them.
    """
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


def daily_cap_breaches(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Add the rows at which a daily cap is exceeded (cumulative within the terminal-day).

    ``over_daily_amount``, ``over_daily_count``: running cap-counting amount / count
    of the terminal-day above the policy's cap; ``over_same_card``: the card's
    running count of cap-counting rows that day above ``max_same_card_per_day``.
    Rows must be sorted by terminal and time (running totals follow row order).
    The per-card count is taken on the narrow cap-counting rows sorted by
    (terminal, day, card, row): almost every card is its own group, which a
    window over the wide rows (a hash group per card) makes slow.
    """
    day = ["terminal_id", "local_date"]
    cap = pl.col("cap_txn")
    cum_amount = pl.when(cap).then(pl.col("amount_minor")).otherwise(0).cum_sum().over(day)
    cum_count = cap.cast(pl.Int64).cum_sum().over(day)
    lf = lf.with_columns(
        (cap & (cum_amount > pl.col("max_daily_amount_minor")))
        .fill_null(False)
        .alias("over_daily_amount"),
        (cap & (cum_count > pl.col("max_daily_txn_count")))
        .fill_null(False)
        .alias("over_daily_count"),
    ).with_row_index("_cap_row")
    keys = ["_term", "local_date", "card_token"]
    i = pl.col("_i")
    sales = (
        lf.filter(cap & pl.col("card_token").is_not_null())
        .select(
            "_cap_row",
            pl.col("terminal_id").rle_id().alias("_term"),  # rows sorted by terminal
            "local_date",
            "card_token",
            "max_same_card_per_day",
        )
        .sort(*keys, "_cap_row")
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_i"))
    )
    same = pl.all_horizontal(*[pl.col(k).eq_missing(pl.col(k).shift(1)) for k in keys]) & (i >= 1)
    hits = (
        sales.with_columns(pl.when(~same).then(i).forward_fill().alias("_first"))
        .filter(i - pl.col("_first") + 1 > pl.col("max_same_card_per_day"))
        .select("_cap_row", pl.lit(True).alias("over_same_card"))
    )
    return (
        lf.join(hits, on="_cap_row", how="left", maintain_order="left")
        .with_columns(pl.col("over_same_card").fill_null(False))
        .drop("_cap_row")
    )


def evidence_flags(technical_codes: list[str]) -> list[pl.Expr]:
    """One boolean per behaviour: the row is evidence of it."""
    return [
        (pl.col("outside_geofence") | pl.col("impossible_hop")).alias("ev_relocation"),
        (
            pl.col("serial_mismatch")
            | pl.col("serial_switch")
            | pl.col("stan_conflict")
            | pl.col("ip_back_switch")
            | pl.col("cell_back_switch")
            | pl.col("stan_chain_return")
        ).alias("ev_cloned_terminal"),
        (pl.col("mcc_mismatch") | pl.col("mcc_switch")).alias("ev_mcc_mismatch"),
        (
            (
                pl.col("approved")
                & (pl.col("round_amount") | (pl.col("night") & pl.col("credit_card")))
            )
            | pl.col("just_under_cap")
            | pl.col("same_card_burst")
            | pl.col("round_split")
            | pl.col("refund_unmatched")
        ).alias("ev_cash_out"),
        (pl.col("testing_window") | pl.col("sequential_card")).alias("ev_card_testing"),
        (
            pl.col("fallback_entry")
            & pl.col("approved")
            & ~(pl.col("testing_like") | pl.col("sequential_card"))
        ).alias("ev_fallback_abuse"),
        pl.col("unregistered_reason").is_not_null().alias("ev_unregistered_use"),
        (
            pl.col("over_txn_cap")
            | pl.col("over_daily_amount")
            | pl.col("over_daily_count")
            | pl.col("over_same_card")
        ).alias("ev_trial_limit_breach"),
        # A declined attempt is not a use of the terminal: only approved rows count.
        (
            pl.col("approved")
            & (
                pl.col("disallowed_card_type")
                | pl.col("disallowed_txn_type")
                | pl.col("disallowed_entry_mode")
                | pl.col("outside_hours")
            )
        ).alias("ev_disallowed_use"),
        (
            pl.col("response_code").is_in(technical_codes)
            | (pl.col("txn_type") == "reversal")
            | pl.col("stan_repeat")
        ).alias("ev_malfunction"),
    ]


def _share(flag: str | pl.Expr, base: pl.Expr | None = None) -> pl.Expr:
    """Mean of a boolean, optionally among rows where ``base`` holds (null when none)."""
    f = pl.col(flag) if isinstance(flag, str) else flag
    if base is None:
        return f.cast(pl.Float64).mean()
    return f.filter(base).cast(pl.Float64).mean()


def _count(flag: str | pl.Expr) -> pl.Expr:
    f = pl.col(flag) if isinstance(flag, str) else flag
    return f.cast(pl.Int64).sum()


def aggregate_expressions() -> list[pl.Expr]:
    """The ``terminal_day`` aggregates, named as in :data:`AGGREGATE_COLUMNS`."""
    ok = pl.col("approved")
    cap = pl.col("cap_txn")
    amt = pl.col("amount_minor")
    cap_amt = amt.filter(cap)
    card_counts = pl.col("card_token").filter(cap).value_counts(sort=True).struct.field("count")
    located = pl.col("distance_km").is_not_null()
    purchases = _count(cap)
    n_refund = _count(pl.col("txn_type") == "refund")
    n_reversal = _count(pl.col("txn_type") == "reversal")
    declined = ~ok
    em = pl.col("entry_mode")
    # Approved fallback / manual reads (domain §1 #8: "any approved fallback"); those
    # inside a card-testing burst are the testing itself.
    fallback = (
        pl.col("fallback_entry") & ok & ~(pl.col("testing_like") | pl.col("sequential_card"))
    )
    return [
        pl.len().cast(pl.Int64).alias("n_txn"),
        _count(ok).alias("n_approved"),
        purchases.alias("n_cap"),
        cap_amt.sum().cast(pl.Int64).alias("cap_amount"),
        cap_amt.mean().alias("amount_mean"),
        cap_amt.std().alias("amount_std"),
        cap_amt.median().cast(pl.Float64).alias("amount_p50"),
        cap_amt.quantile(0.9).cast(pl.Float64).alias("amount_p90"),
        cap_amt.max().cast(pl.Int64).alias("amount_max"),
        _share("round_amount", cap).alias("round_share"),
        _share("just_under_cap", cap).alias("just_under_cap_share"),
        _share("credit_card", cap).alias("credit_share"),
        _share("night", cap).alias("night_share"),
        _share("outside_hours").alias("outside_hours_share"),
        pl.col("card_token").n_unique().cast(pl.Int64).alias("n_cards"),
        card_counts.max().cast(pl.Int64).alias("max_same_card"),
        (card_counts.head(5).sum() / purchases).cast(pl.Float64).alias("top5_card_share"),
        _count("same_card_burst").alias("n_same_card_bursts"),
        declined.cast(pl.Float64).mean().alias("decline_rate"),
        *[
            (pl.col("decline_family") == fam)
            .fill_null(False)
            .cast(pl.Float64)
            .mean()
            .alias(f"decline_{fam}_rate")
            for fam in ("card", "pin", "funds", "technical")
        ],
        _count((pl.col("decline_family") == "technical").fill_null(False)).alias("n_technical"),
        n_refund.alias("n_refund"),
        (n_refund / purchases).cast(pl.Float64).alias("refund_ratio"),
        _count("refund_unmatched").alias("n_unmatched_refund"),
        n_reversal.alias("n_reversal"),
        (n_reversal / purchases).cast(pl.Float64).alias("reversal_ratio"),
        _share(em == "05").alias("chip_share"),
        _share(em.is_in(["07", "91"])).alias("contactless_share"),
        _share(em == "03").alias("qr_share"),
        _share(fallback, ok).alias("fallback_share"),
        _count(fallback).alias("n_fallback"),
        _share(em == "01").alias("manual_share"),
        _count("mcc_mismatch").alias("n_mcc_mismatch"),
        _share("mcc_mismatch").alias("mcc_mismatch_share"),
        _count("mcc_switch").alias("n_mcc_switch"),
        pl.col("mcc").n_unique().cast(pl.Int64).alias("n_distinct_mcc"),
        _count(located).alias("n_located"),
        _count("outside_geofence").alias("n_outside_geofence"),
        pl.col("distance_km").median().alias("distance_p50_km"),
        pl.col("distance_km").quantile(0.95).alias("distance_p95_km"),
        pl.col("distance_km").max().alias("distance_max_km"),
        pl.col("geofence_m").max().alias("geofence_m"),
        pl.col("hop_speed_kmh").filter(pl.col("hop_km") >= 1.0).max().alias("max_speed_kmh"),
        _count("impossible_hop").alias("n_impossible_hops"),
        pl.col("device_serial").drop_nulls().n_unique().cast(pl.Int64).alias("n_serials"),
        pl.col("ip_address").drop_nulls().n_unique().cast(pl.Int64).alias("n_ips"),
        pl.col("cell_id").drop_nulls().n_unique().cast(pl.Int64).alias("n_cells"),
        _count("serial_mismatch").alias("n_serial_mismatch"),
        _count("serial_switch").alias("n_serial_switch"),
        _count("serial_back_switch").alias("n_serial_back_switch"),
        _count("ip_back_switch").alias("n_ip_back_switch"),
        _count("cell_back_switch").alias("n_cell_back_switch"),
        _count("stan_repeat").alias("n_stan_repeat"),
        _count("stan_conflict").alias("n_stan_conflict"),
        _count("stan_out_of_order").alias("n_stan_out_of_order"),
        _count(pl.col("unregistered_reason").is_not_null()).alias("n_unregistered"),
        _count("over_txn_cap").alias("n_over_txn_cap"),
        _count("over_daily_amount").alias("n_over_daily_amount"),
        _count("over_daily_count").alias("n_over_daily_count"),
        _count("over_same_card").alias("n_over_same_card"),
        _count(pl.col("disallowed_card_type") & ok).alias("n_disallowed_card_type"),
        _count(pl.col("disallowed_txn_type") & ok).alias("n_disallowed_txn_type"),
        _count(pl.col("disallowed_entry_mode") & ok).alias("n_disallowed_entry_mode"),
        _count(pl.col("disallowed_entry_mode") & ~pl.col("fallback_entry") & ok).alias(
            "n_disallowed_entry_nonfallback"
        ),
        _count(pl.col("outside_hours") & ok).alias("n_outside_hours"),
        pl.col("window_cards").max().cast(pl.Int64).alias("max_cards_window"),
        pl.col("testing_cards_row").max().cast(pl.Int64).alias("testing_cards"),
        pl.col("testing_decl_row").max().alias("testing_decline_rate"),
        pl.col("testing_med_row").min().cast(pl.Float64).alias("testing_median_amount"),
        pl.col("card_token")
        .filter(pl.col("sequential_card"))
        .n_unique()
        .cast(pl.Int64)
        .alias("n_sequential_cards"),
    ]


def device_expressions() -> list[pl.Expr]:
    """Per terminal-day device signals the rules read that are not stored in ``terminal_day``.

    ``n_stan_returns``: messages returning to an earlier, separately running STAN
    counter (:func:`features.transactions.with_stan_chains`); ``n_stan_counters``:
    distinct counters among the day's messages with a STAN. ``n_located_own``,
    ``n_outside_geofence_own``, ``distance_p50_own_km``: the location aggregates over
    the registered device's own messages (serial as registered, or none reported).
    """
    chain = pl.col("stan_chain")
    # The registered device's own rows (serial as registered or not reported): a clone
    # elsewhere is not the terminal moving, as hops are measured per device.
    own = ~pl.col("serial_mismatch")
    located = pl.col("distance_km").is_not_null()
    return [
        _count("stan_chain_return").alias("n_stan_returns"),
        chain.filter(chain >= 0).n_unique().cast(pl.Int64).alias("n_stan_counters"),
        _count(located & own).alias("n_located_own"),
        _count(pl.col("outside_geofence") & own).alias("n_outside_geofence_own"),
        pl.col("distance_km").filter(own).median().alias("distance_p50_own_km"),
    ]


def _detail_expressions() -> list[pl.Expr]:
    """Per terminal-day values used only in reason texts (not stored)."""
    return [
        pl.col("unregistered_reason").drop_nulls().first().alias("unregistered_reason"),
        pl.col("reg_registered_mcc").first().alias("registered_mcc"),
        pl.col("mcc").filter(pl.col("mcc_mismatch")).mode().sort().first().alias("mismatch_mcc"),
        pl.col("max_txn_amount_minor").first().alias("max_txn_amount_minor"),
        pl.col("max_daily_amount_minor").first().alias("max_daily_amount_minor"),
        pl.col("max_daily_txn_count").first().alias("max_daily_txn_count"),
        pl.col("max_same_card_per_day").first().alias("max_same_card_per_day"),
        pl.col("amount_minor").filter(pl.col("over_txn_cap")).max().alias("max_over_cap_amount"),
        pl.col("card_type")
        .filter(pl.col("disallowed_card_type") & pl.col("approved"))
        .mode()
        .sort()
        .first()
        .alias("disallowed_card_type_value"),
        pl.col("txn_type")
        .filter(pl.col("disallowed_txn_type") & pl.col("approved"))
        .mode()
        .sort()
        .first()
        .alias("disallowed_txn_type_value"),
        pl.col("entry_mode")
        .filter(pl.col("disallowed_entry_mode") & pl.col("approved"))
        .mode()
        .sort()
        .first()
        .alias("disallowed_entry_mode_value"),
        pl.col("hours_start_min").first().alias("hours_start_min"),
        pl.col("hours_end_min").first().alias("hours_end_min"),
    ]


def terminal_day(enriched: pl.LazyFrame, config: dict[str, Any]) -> pl.LazyFrame:
    """One row per (terminal_id, local_date): attributes, aggregates, details and evidence.

    Parameters
    ----------
    enriched : LazyFrame
        :func:`features.transactions.enrich_transactions` output, rows sorted by
        (terminal_id, txn_time, txn_id) as it returns them (daily caps are
        cumulative in that order).
    config : dict
        Thresholds (``card_testing`` and ``decline_families`` are used here).
    """
    lf = card_testing_windows(enriched, config["card_testing"])
    lf = sequential_cards(lf, config["card_testing"])
    # Both forms of domain §1 #7's "sequential PANs" (constant step, incrementing
    # in order of use) are one signal: ``sequential_card`` / ``n_sequential_cards``.
    lf = incrementing_cards(lf, config["card_testing"]).with_columns(
        (pl.col("sequential_card") | pl.col("incrementing_card")).alias("sequential_card")
    )
    # The joins above keep the row order of ``enriched``, which
    # enrich_transactions sorts by (terminal_id, txn_time, txn_id): cumulative
    # caps need that time order, so no second sort of the wide rows is needed.
    lf = daily_cap_breaches(lf)
    lf = round_splits(
        lf,
        int(config["cash_out"]["same_card_window_s"]),
        int(config["general"]["round_amount_minor"]),
    )
    technical = list(config["decline_families"]["technical"])
    lf = lf.with_columns(evidence_flags(technical))
    attrs = [
        pl.col("reg_merchant_id").first().alias("merchant_id"),
        pl.col("reg_registered_mcc").first().alias("registered_mcc"),
        pl.col("reg_region_code").first().alias("region_code"),
        pl.col("reg_terminal_kind").first().alias("terminal_kind"),
        pl.col("policy_key").first().alias("policy_key"),
    ]
    evidence = [
        pl.col("txn_id").filter(pl.col(f"ev_{b}")).head(MAX_EVIDENCE).alias(f"ev_{b}")
        for b in EVIDENCE_BEHAVIOURS
    ]
    details = [e for e in _detail_expressions() if e.meta.output_name() != "registered_mcc"]
    return lf.group_by("terminal_id", "local_date").agg(
        *attrs,
        *aggregate_expressions(),
        *device_expressions(),
        # Not stored in terminal_day either: split sales summing to a round figure.
        _count("round_split_start").alias("n_round_splits"),
        *details,
        *evidence,
    )
