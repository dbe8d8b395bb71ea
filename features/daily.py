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


def _card_runs(
    lf: pl.LazyFrame, cfg: dict[str, Any], sequential: bool, incrementing: bool
) -> pl.LazyFrame:
    """Add ``sequential_card`` and / or ``incrementing_card`` from one sort of the card rows.

    The narrow card columns are sorted once by (terminal, day, BIN, last4, time);
    each card's first row is then its first use, which both tests read (see
    :func:`sequential_cards` and :func:`incrementing_cards`). Only rows of cards in a
    run are joined back (by row number), so the wide rows are neither grouped nor
    joined on strings. Rows must be sorted by terminal (as :func:`terminal_day`
    gets them).
    """
    card = ["_term", "local_date", "card_bin", "card_last4"]
    keys = ["_term", "local_date", "card_bin"]
    lf = lf.with_row_index("_card_row")
    rows = (
        _card_rows(lf, "_card_row")
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
        # read two or three times below: sorted once
        .collect(engine="in-memory")
        .lazy()
    )
    # One row per card: its first use (time sorted, missing times last).
    cards = rows.filter(~_same_as_row_above(card, 1)).select(
        "_card", *keys, "l4", pl.col("txn_time").alias("first_t")
    )
    marks = []
    if sequential:
        marks.append(_sequential_run_cards(cards, cfg).with_columns(pl.lit(True).alias("_seq")))
    if incrementing:
        marks.append(_incrementing_run_cards(cards, cfg).with_columns(pl.lit(True).alias("_inc")))
    hit = rows.select("_card_row", "_card", "txn_time")
    for m in marks:
        hit = hit.join(m, on="_card", how="left")
    flags = []
    if sequential:
        flags.append(pl.col("_seq").fill_null(False).alias("sequential_card"))
    if incrementing:
        # incrementing runs read timed rows only: a card's rows without a time are not marked
        flags.append(
            (pl.col("_inc").fill_null(False) & pl.col("txn_time").is_not_null()).alias(
                "incrementing_card"
            )
        )
    names = [f.meta.output_name() for f in flags]
    hits = hit.select("_card_row", *flags).filter(pl.any_horizontal(names))
    return _join_hits(lf, hits, "_card_row")


def _sequential_run_cards(cards: pl.LazyFrame, cfg: dict[str, Any]) -> pl.LazyFrame:
    """``_card`` of the cards in a constant-step run of 3 (cards sorted by keys, last4)."""
    keys = ["_term", "local_date", "card_bin"]
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
    return cards.filter(member).select("_card")


def _incrementing_run_cards(cards: pl.LazyFrame, cfg: dict[str, Any]) -> pl.LazyFrame:
    """``_card`` of the cards in an incrementing run (see :func:`incrementing_cards`)."""
    keys = ["_term", "local_date", "card_bin"]
    # A card's first row has its earliest time (missing times sort last); cards
    # without a numeric last4 or without any timed row are left out.
    cards = cards.filter(pl.col("l4").is_not_null() & pl.col("first_t").is_not_null()).sort(
        *keys, "first_t", "l4", "_card"
    )
    same = _same_as_row_above(keys, 1)
    step = pl.col("l4") - pl.col("l4").shift(1)
    dt = pl.col("first_t").dt.epoch("s") - pl.col("first_t").dt.epoch("s").shift(1)
    linked = (
        same & (step >= 1) & (step <= int(cfg["max_last4_step"])) & (dt <= int(cfg["window_s"]))
    ).fill_null(False)
    run = (~linked).cum_sum()
    return (
        cards.with_columns(run.alias("_run"))
        .filter(pl.len().over("_run") >= int(cfg["min_incrementing_run"]))
        .select("_card")
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
    return _card_runs(lf, cfg, sequential=True, incrementing=False)


def incrementing_cards(lf: pl.LazyFrame, cfg: dict[str, Any]) -> pl.LazyFrame:
    """Mark rows whose card is in a run of same-BIN cards whose last4 rise in order of use.

    Domain §1 #7: "sequential PANs: same BIN with consecutive or *incrementing*
    last-4". A rig that enumerates a PAN range tries the cards in number order;
    the Luhn check digit (the last digit) makes the last4 steps uneven, so the
    constant-step test of :func:`sequential_cards` misses it. Here the terminal's
    same-BIN cards of a day are taken in order of first use; a run is a chain of
    consecutive cards each with a last4 above the previous one by 1 to
    ``max_last4_step`` and first used within ``window_s`` of it. Rows of cards in
    runs of at least ``min_incrementing_run`` cards get ``incrementing_card``
    (their rows with a time; rows without a numeric last4 or a time are not read).

    Rows must be sorted by terminal (as :func:`terminal_day` gets them). The cards
    come from the sort :func:`sequential_cards` uses (:func:`card_runs` does both
    with one sort).
    """
    return _card_runs(lf, cfg, sequential=False, incrementing=True)


def card_runs(lf: pl.LazyFrame, cfg: dict[str, Any]) -> pl.LazyFrame:
    """:func:`sequential_cards` and :func:`incrementing_cards` with one sort of the card rows."""
    return _card_runs(lf, cfg, sequential=True, incrementing=True)


def _card_sales(lf: pl.LazyFrame, row: str, columns: list[str]) -> pl.LazyFrame:
    """Cap-counting rows with a card, narrow, sorted by (terminal, day, card, ``row``).

    ``row`` is ``lf``'s row index; ``lf``'s rows must be sorted by terminal and time.
    A card's sales of the day are then contiguous and in time order, so its running
    count or its sessions are runs of rows: no window over the wide rows with one
    hash group per card (almost every card is its own group), which is slow.
    Computed once (read two or three times by the callers).
    """
    return (
        lf.filter(pl.col("cap_txn") & pl.col("card_token").is_not_null())
        .select(
            row,
            pl.col("terminal_id").rle_id().alias("_term"),  # rows sorted by terminal
            "local_date",
            "card_token",
            *columns,
        )
        .sort("_term", "local_date", "card_token", row)
        .collect(engine="in-memory")
        .lazy()
    )


_CARD_DAY = ["_term", "local_date", "card_token"]


def _join_hits(lf: pl.LazyFrame, hits: pl.LazyFrame, row: str, drop: bool = True) -> pl.LazyFrame:
    """Boolean columns of ``hits`` (rows by ``row``) onto ``lf``; False where absent.

    ``hits`` is small (the rows where a flag holds), ``lf`` wide: each flag is set by
    looking ``row`` up in the hit rows where it is true instead of joining the wide
    rows (a left join gathered every column of ``lf``: issue 4). Same result as the
    left join with nulls filled by False, provided ``row`` is unique in ``hits``.
    """
    hit = hits.collect(engine="in-memory")
    names = [c for c in hit.columns if c != row]
    out = lf.with_columns(
        pl.col(row)
        .is_in(hit.filter(pl.col(name).fill_null(False)).get_column(row).implode())
        .alias(name)
        for name in names
    )
    return out.drop(row) if drop else out


def _same_card_hits(sales: pl.LazyFrame, row: str) -> pl.LazyFrame:
    """``over_same_card`` rows: the card's running count that day above its cap."""
    i = pl.col("_i")
    sales = sales.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_i"))
    same = pl.all_horizontal(*[pl.col(k).eq_missing(pl.col(k).shift(1)) for k in _CARD_DAY]) & (
        i >= 1
    )
    return (
        sales.with_columns(pl.when(~same).then(i).forward_fill().alias("_first"))
        .filter(i - pl.col("_first") + 1 > pl.col("max_same_card_per_day"))
        .select(row, pl.lit(True).alias("over_same_card"))
    )


def _round_split_hits(
    sales: pl.LazyFrame, row: str, window_s: int, round_minor: int
) -> pl.LazyFrame:
    """``round_split`` / ``round_split_start`` rows (see :func:`round_splits`)."""
    t = pl.col("txn_time")
    gap = (t - t.shift(1)).dt.total_seconds()
    # A missing time (either side) starts a session, as a null gap did in the window form.
    start = pl.col("_rs_start")
    sales = sales.with_columns(
        (~_same_as_row_above(_CARD_DAY, 1) | (gap > window_s).fill_null(True)).alias("_rs_start")
    )
    # Only sessions of two sales or more can be splits: drop the single-sale sessions
    # (almost all) before the per-session windows.
    multi = sales.filter(~start | ~start.shift(-1).fill_null(True)).with_columns(
        start.cum_sum().alias("_rs_session")
    )
    session = pl.col("_rs_session")
    amount = pl.col("amount_minor")
    split = (
        t.is_not_null()
        & (pl.len().over(session) >= 2)
        & (amount.sum().over(session) % round_minor == 0)
        & ~(amount % round_minor == 0).all().over(session)
    ).fill_null(False)
    return multi.filter(split).select(
        row, pl.lit(True).alias("round_split"), start.alias("round_split_start")
    )


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
    Sessions are found on the narrow card sales sorted by (terminal, day, card, row)
    (:func:`_card_sales`): a window over the wide rows with one hash group per card
    cost ~100 s CPU per million rows (issue 4). Rows without a time stay in: they
    break a session, as before.
    """
    lf = lf.with_row_index("_rs_row")
    sales = _card_sales(lf, "_rs_row", ["txn_time", "amount_minor"])
    return _join_hits(lf, _round_split_hits(sales, "_rs_row", window_s, round_minor), "_rs_row")


def _daily_totals(lf: pl.LazyFrame) -> pl.LazyFrame:
    """``over_daily_amount``, ``over_daily_count`` (see :func:`daily_cap_breaches`)."""
    day = ["terminal_id", "local_date"]
    cap = pl.col("cap_txn")
    cum_amount = pl.when(cap).then(pl.col("amount_minor")).otherwise(0).cum_sum().over(day)
    cum_count = cap.cast(pl.Int64).cum_sum().over(day)
    return lf.with_columns(
        (cap & (cum_amount > pl.col("max_daily_amount_minor")))
        .fill_null(False)
        .alias("over_daily_amount"),
        (cap & (cum_count > pl.col("max_daily_txn_count")))
        .fill_null(False)
        .alias("over_daily_count"),
    )


def daily_cap_breaches(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Add the rows at which a daily cap is exceeded (cumulative within the terminal-day).

    ``over_daily_amount``, ``over_daily_count``: running cap-counting amount / count
    of the terminal-day above the policy's cap; ``over_same_card``: the card's
    running count of cap-counting rows that day above ``max_same_card_per_day``.
    Rows must be sorted by terminal and time (running totals follow row order).
    The per-card count is taken on the narrow cap-counting rows sorted by
    (terminal, day, card, row) (:func:`_card_sales`).
    """
    lf = _daily_totals(lf).with_row_index("_cap_row")
    sales = _card_sales(lf, "_cap_row", ["max_same_card_per_day"])
    return _join_hits(lf, _same_card_hits(sales, "_cap_row"), "_cap_row")


def cap_breaches_and_round_splits(
    lf: pl.LazyFrame, window_s: int, round_minor: int
) -> pl.LazyFrame:
    """:func:`daily_cap_breaches` then :func:`round_splits`, with one sort of the card sales."""
    row = "_sale_row"
    lf = _daily_totals(lf).with_row_index(row)
    sales = _card_sales(lf, row, ["txn_time", "amount_minor", "max_same_card_per_day"])
    lf = _join_hits(lf, _same_card_hits(sales, row), row, drop=False)
    return _join_hits(lf, _round_split_hits(sales, row, window_s, round_minor), row)


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


def technical_incidents(gap_s: int) -> pl.Expr:
    """``n_technical_incidents``: the day's technical declines, those within ``gap_s``
    seconds of the previous one counted once (one network outage = one incident).

    A host or line outage fails every attempt in it within minutes; a faulty
    device fails now and then all day. Per-group expression (time order not needed).
    """
    technical = (pl.col("decline_family") == "technical").fill_null(False)
    gaps = pl.col("txn_time").filter(technical).sort().diff().dt.total_seconds()
    return (gaps.fill_null(gap_s + 1) > gap_s).sum().cast(pl.Int64).alias("n_technical_incidents")


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
    # Count of each card (null included) among the cap-counting rows; unique_counts is
    # ~3x cheaper per group than value_counts(sort=True), and top_k(5) sums the same
    # 5 largest counts as its sorted head(5) (issue 4).
    card_counts = pl.col("card_token").filter(cap).unique_counts()
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
        _count(pl.col("just_under_cap").filter(cap)).alias("n_just_under_cap"),
        _share("credit_card", cap).alias("credit_share"),
        _share("night", cap).alias("night_share"),
        _share("outside_hours").alias("outside_hours_share"),
        pl.col("card_token").n_unique().cast(pl.Int64).alias("n_cards"),
        card_counts.max().cast(pl.Int64).alias("max_same_card"),
        (card_counts.top_k(5).sum() / purchases).cast(pl.Float64).alias("top5_card_share"),
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


def _in_memory(lf: pl.LazyFrame) -> pl.LazyFrame:
    """``lf`` computed once (polars' in-memory engine) and handed on lazy."""
    return lf.collect(engine="in-memory").lazy()


def _agg_terminal_days(lf: pl.LazyFrame, *aggs: pl.Expr) -> pl.LazyFrame:
    """``lf.group_by("terminal_id", "local_date").agg(*aggs)``, on an integer run id if it can.

    Rows sorted by terminal and time have each (terminal, day) as one run of rows
    (unless a terminal's days interleave, e.g. rows without a time sorted first):
    grouping by the run id (a sorted integer) instead of the two string keys halves
    the CPU of the ~120 aggregations (issue 4). The run id is used only when it
    numbers exactly the distinct (terminal, day) pairs; otherwise the string keys
    are. The aggregates are the same either way (rows keep their order within a
    group); the output rows come in run order instead of an arbitrary order.
    """
    df = lf.collect(engine="in-memory")
    key = pl.struct("terminal_id", "local_date")
    run = df.select(key.rle_id().alias("_tg_td")).to_series()
    if df.height == 0 or int(run.max()) + 1 != df.select(key.n_unique()).item():
        return df.lazy().group_by("terminal_id", "local_date").agg(*aggs)
    return (
        df.with_columns(run.set_sorted())
        .lazy()
        .group_by("_tg_td", maintain_order=True)
        .agg(pl.col("terminal_id").first(), pl.col("local_date").first(), *aggs)
        .drop("_tg_td")
    )


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
    # Each step below reads its input twice (narrow rows to sort, wide rows to join
    # back), so chained lazily the earlier steps were recomputed for every later one
    # (the plan scanned the input 18 times): each step's rows are materialised
    # instead (issue 4; the columns are shared, not copied).
    lf = _in_memory(card_testing_windows(enriched, config["card_testing"]))
    # Both forms of domain §1 #7's "sequential PANs" (constant step, incrementing
    # in order of use) are one signal: ``sequential_card`` / ``n_sequential_cards``.
    lf = _in_memory(
        card_runs(lf, config["card_testing"]).with_columns(
            (pl.col("sequential_card") | pl.col("incrementing_card")).alias("sequential_card")
        )
    )
    # The joins above keep the row order of ``enriched``, which
    # enrich_transactions sorts by (terminal_id, txn_time, txn_id): cumulative
    # caps need that time order, so no second sort of the wide rows is needed.
    # daily_cap_breaches, then round_splits, with one sort of the card sales.
    lf = _in_memory(
        cap_breaches_and_round_splits(
            lf,
            int(config["cash_out"]["same_card_window_s"]),
            int(config["general"]["round_amount_minor"]),
        )
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
    return _agg_terminal_days(
        lf,
        *attrs,
        *aggregate_expressions(),
        *device_expressions(),
        technical_incidents(int(config["malfunction"]["incident_gap_s"])),
        # Not stored in terminal_day either: split sales summing to a round figure.
        _count("round_split_start").alias("n_round_splits"),
        *details,
        *evidence,
    )
