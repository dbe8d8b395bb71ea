"""Cash-out features: split sales (same card, same terminal, short interval, summing to a round figure) and daily cap breaches per terminal and card."""

from __future__ import annotations

import polars as pl


def _same_as_row_above(keys: list[str], k: int) -> pl.Expr:
    """The row ``k`` rows up has the same ``keys`` (a group's rows are contiguous)."""
    return pl.all_horizontal(
        *[pl.col(c).eq_missing(pl.col(c).shift(k)) for c in keys],
        pl.int_range(pl.len(), dtype=pl.Int64) >= k,
    )


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
