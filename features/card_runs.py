"""Card-testing features: per-terminal time windows of many cards / declines / small amounts, and runs of sequential or incrementing card numbers (same BIN, last 4 stepping by a small constant; visible from BIN + last 4 alone)."""

from __future__ import annotations

from typing import Any

import polars as pl

from features.splits import _join_hits, _same_as_row_above


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
