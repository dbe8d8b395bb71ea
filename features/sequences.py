"""Features that compare a transaction with the ones before it on the same terminal: location hops and impossible travel, device / IP / cell / MCC switches, STAN order, same-card bursts, and the numba-backed sequence passes (STAN repeats and chains, hops)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from features.geo import haversine_km
from kernels import device_interleaving, previous_flagged, same_value_recent, stan_chains


def _same_terminal_as_prev(k: int = 1) -> pl.Expr:
    """The row ``k`` rows earlier belongs to the same terminal (rows sorted by terminal)."""
    t = pl.col("terminal_id")
    return t.eq_missing(t.shift(k)) & (pl.int_range(pl.len(), dtype=pl.Int64) >= k)


def _shift_in_terminal(expr: pl.Expr, k: int = 1) -> pl.Expr:
    """``expr.shift(k).over("terminal_id")`` on rows sorted by terminal."""
    return pl.when(_same_terminal_as_prev(k)).then(expr.shift(k))


def _ffill_in_terminal(expr: pl.Expr) -> pl.Expr:
    """``expr.forward_fill().over("terminal_id")`` on rows sorted by terminal."""
    idx = pl.int_range(pl.len(), dtype=pl.Int64)
    start = pl.when(~_same_terminal_as_prev(1)).then(idx).forward_fill()
    last = pl.when(expr.is_not_null()).then(idx).forward_fill()
    return pl.when(last >= start).then(expr.forward_fill())


def _prev_located(col: str) -> pl.Expr:
    """Value of ``col`` at the previous located row of the same terminal and device.

    Hops are measured per device serial: two devices sharing a terminal id
    (a clone) are not one device travelling back and forth.
    """
    located = pl.col("terminal_lat").is_not_null() & pl.col("terminal_lon").is_not_null()
    return (
        pl.when(located)
        .then(pl.col(col))
        .otherwise(None)
        .shift(1)
        .forward_fill()
        .over(["terminal_id", "device_serial"])
    )


def hop_km(prev_lat: pl.Expr | None = None, prev_lon: pl.Expr | None = None) -> pl.Expr:
    """Distance from the terminal's previous located transaction, km.

    ``prev_lat`` / ``prev_lon``: the previous located fix of the same terminal and
    device when already known (:func:`with_hops`); by default a window finds it.
    """
    return haversine_km(
        _prev_located("terminal_lat") if prev_lat is None else prev_lat,
        _prev_located("terminal_lon") if prev_lon is None else prev_lon,
        pl.col("terminal_lat"),
        pl.col("terminal_lon"),
    ).alias("hop_km")


def hop_speed_kmh(prev_time: pl.Expr | None = None) -> pl.Expr:
    """Implied travel speed from the previous located transaction, km/h.

    ``prev_time``: that transaction's time when already known (:func:`with_hops`).
    """
    prev = _prev_located("txn_time") if prev_time is None else prev_time
    dt_h = (pl.col("txn_time") - prev).dt.total_seconds() / 3600.0
    # Two fixes at the same second: use one second so the speed stays finite.
    return (pl.col("hop_km") / dt_h.clip(lower_bound=1.0 / 3600.0)).alias("hop_speed_kmh")


def impossible_hop(max_speed_kmh: float, min_jump_km: float) -> pl.Expr:
    """A hop faster than ``max_speed_kmh`` over at least ``min_jump_km``."""
    return (
        ((pl.col("hop_speed_kmh") > max_speed_kmh) & (pl.col("hop_km") >= min_jump_km))
        .fill_null(False)
        .alias("impossible_hop")
    )


def _switches(col: str) -> tuple[pl.Expr, pl.Expr]:
    """(switch, back_switch) of ``col`` along the terminal's rows, nulls carried forward."""
    v = _ffill_in_terminal(pl.col(col))
    prev = _shift_in_terminal(v)
    switch = (v != prev).fill_null(False) & pl.col(col).is_not_null()
    # run_prev = the value of the run before the current one.
    run_prev = _ffill_in_terminal(pl.when(v != prev).then(prev).otherwise(None))
    back = switch & (v == _shift_in_terminal(run_prev)).fill_null(False)
    return switch, back


def serial_switch() -> pl.Expr:
    """Device serial differs from the previous message's serial."""
    return _switches("device_serial")[0].alias("serial_switch")


def serial_back_switch() -> pl.Expr:
    """Device serial returns to the serial used before the previous switch (A, B, A)."""
    return _switches("device_serial")[1].alias("serial_back_switch")


def ip_back_switch() -> pl.Expr:
    """IP address returns to the previous-but-one address (two sessions at once)."""
    return _switches("ip_address")[1].alias("ip_back_switch")


def cell_back_switch() -> pl.Expr:
    """Cell id returns to the previous-but-one cell."""
    return _switches("cell_id")[1].alias("cell_back_switch")


def mcc_switch() -> pl.Expr:
    """Message MCC differs from the terminal's previous message MCC."""
    return (
        (pl.col("mcc") != _shift_in_terminal(pl.col("mcc"))).fill_null(False).alias("mcc_switch")
    )


def stan_out_of_order() -> pl.Expr:
    """STAN lower than the previous message's STAN (and not a wrap from 999999)."""
    s = pl.col("stan").cast(pl.Int64, strict=False)
    prev = _shift_in_terminal(s)
    return ((s < prev) & ((prev - s) < 900_000)).fill_null(False).alias("stan_out_of_order")


def stan_repeat() -> pl.Expr:
    """STAN seen before on the same terminal the same day with the same amount and card."""
    keys = ["terminal_id", "local_date", "stan", "amount_minor", "card_token"]
    return (pl.col("stan").is_not_null() & (pl.int_range(pl.len()).over(keys) > 0)).alias(
        "stan_repeat"
    )


def stan_conflict() -> pl.Expr:
    """STAN used more than once on the same terminal the same day with a different amount or card."""
    keys = ["terminal_id", "local_date", "stan"]
    content = pl.struct("amount_minor", "card_token")
    return (pl.col("stan").is_not_null() & (content.n_unique().over(keys) > 1)).alias(
        "stan_conflict"
    )


def same_card_burst(k: int, window_s: int) -> pl.Expr:
    """Approved sale that is the ``k``-th by the same card within ``window_s`` seconds.

    Only approved cap-counting sales count: a customer retrying a declined card
    is not splitting a sale.
    """
    keys = ["terminal_id", "card_token", "cap_txn"]
    gap = (pl.col("txn_time") - pl.col("txn_time").shift(k - 1).over(keys)).dt.total_seconds()
    return (
        (pl.col("cap_txn") & pl.col("card_token").is_not_null() & (gap <= window_s))
        .fill_null(False)
        .alias("same_card_burst")
    )


#: Largest int64 magnitude used for tie-broken kernel times (headroom below 2**63).
_MAX_KERNEL_TIME = 2**62


def _group_codes(terminal_id: pl.Series) -> np.ndarray:
    """int64 code per row, increasing with ``terminal_id`` (rows sorted by terminal)."""
    change = terminal_id.ne_missing(terminal_id.shift(1)).fill_null(True)
    return change.cast(pl.Int64).cum_sum().to_numpy()


def _value_codes(values: pl.Series) -> np.ndarray:
    """Non-negative int64 code per value (64-bit hash halved), -1 for null."""
    # hash() gives nulls a hash too, so they are replaced explicitly.
    h = (values.hash() // 2).cast(pl.Int64)
    return h.zip_with(values.is_not_null(), pl.Series([-1], dtype=pl.Int64)).to_numpy()


def _tie_broken_times(group: np.ndarray, t_us: np.ndarray, window_us: int):
    """Times and window that make ties follow row order for the window kernels.

    Returns ``(t2, w2)`` with ``t2 = (t - t_min) * M + r`` (``r`` the row's rank in
    its group, ``M / 2`` above every rank) and ``w2 = window_us * M + M / 2``, so that
    ``t2_i - t2_j < w2`` exactly when ``t_i - t_j <= window_us`` for an earlier row j,
    and no two rows of a group tie. ``None`` when the values would not fit in int64.
    """
    n = group.shape[0]
    idx = np.arange(n, dtype=np.int64)
    first = np.r_[True, group[1:] != group[:-1]]
    start = np.maximum.accumulate(np.where(first, idx, 0))
    rank = idx - start
    half = 1 << int(max(int(rank.max()) + 1, 1)).bit_length()
    m = 2 * half
    rel = t_us - t_us.min()
    if (int(rel.max()) + window_us + 1) * m >= _MAX_KERNEL_TIME:
        return None
    return rel * m + rank, window_us * m + half


def _kernel_stan_repeat(
    df: pl.DataFrame, group: np.ndarray, t_us: np.ndarray
) -> np.ndarray | None:
    """:func:`stan_repeat` by ``same_value_recent`` on a hash of the repeat key (None: overflow).

    Within a terminal, the value is the hash of (day, STAN, amount, card) and the
    window covers every row, so a count above 1 means an earlier row (in row
    order, times tie-broken) carried the same content.
    """
    has = df.get_column("stan").is_not_null().to_numpy()
    sel = np.flatnonzero(has)
    out = np.zeros(df.height, dtype=np.bool_)
    if sel.size == 0:
        return out
    g, t = group[sel], t_us[sel]
    tied = _tie_broken_times(g, t, int(t.max() - t.min()) + 1)
    if tied is None:
        return None
    key = (
        df.select(pl.struct("local_date", "stan", "amount_minor", "card_token").hash() // 2)
        .to_series()
        .cast(pl.Int64)
        .gather(sel)
        .to_numpy()
    )
    out[sel] = same_value_recent(g, tied[0], key, tied[1]) > 1
    return out


def with_sequence_kernels(df: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
    """Add ``serial_switch``, ``stan_repeat`` and ``same_card_burst`` from the numba kernels.

    Kernel-backed, so it takes and returns a **materialised** frame (not an
    expression): rows must be sorted by ``(terminal_id, txn_time)`` (as
    :func:`enrich_transactions` sorts them) and carry ``cap_txn``. The results
    equal :func:`serial_switch` and :func:`same_card_burst` row for row (ties in
    time follow row order, as the ``shift``-based expressions do; values are
    compared by 64-bit hashes); when a time is missing or the tie-broken times
    would overflow int64, those expressions are used.
    """
    co = config["cash_out"]
    k, window_s = int(co["same_card_burst"]), int(co["same_card_window_s"])
    if df.height == 0 or df.get_column("txn_time").null_count():
        return df.with_columns(serial_switch(), stan_repeat(), same_card_burst(k, window_s))
    group = _group_codes(df.get_column("terminal_id"))
    t_us = df.get_column("txn_time").dt.epoch("us").to_numpy()
    switch, _ = device_interleaving(group, t_us, _value_codes(df.get_column("device_serial")), 1)
    out = df.with_columns(pl.Series("serial_switch", switch))
    repeat = _kernel_stan_repeat(df, group, t_us)
    out = out.with_columns(stan_repeat() if repeat is None else pl.Series("stan_repeat", repeat))

    sales = (df.get_column("cap_txn") & df.get_column("card_token").is_not_null()).to_numpy()
    sel = np.flatnonzero(sales)
    burst = np.zeros(df.height, dtype=np.bool_)
    if sel.size:
        g = group[sel]
        tied = _tie_broken_times(g, t_us[sel], window_s * 1_000_000)
        if tied is None:
            return out.with_columns(same_card_burst(k, window_s))
        cards = _value_codes(df.get_column("card_token").gather(sel))
        burst[sel] = same_value_recent(g, tied[0], cards, tied[1]) >= k
    return out.with_columns(pl.Series("same_card_burst", burst))


def with_hops(df: pl.DataFrame) -> pl.DataFrame:
    """Add ``hop_km`` and ``hop_speed_kmh`` with the previous fixes found by a kernel.

    Equal to :func:`hop_km` and :func:`hop_speed_kmh` row for row: the previous
    located row of the same terminal and device serial is found by
    :func:`kernels.previous_flagged` on a 64-bit hash of the serial instead of two
    windows over ``(terminal_id, device_serial)`` (issue 4). Every pointer found is
    checked against the serial itself; on a hash collision (or no rows) the
    windows are used. Takes and returns a materialised frame sorted by
    ``(terminal_id, txn_time)``.
    """
    if df.height == 0:
        return df.with_columns(hop_km()).with_columns(hop_speed_kmh())
    group = _group_codes(df.get_column("terminal_id"))
    serial = df.get_column("device_serial")
    sub = _value_codes(serial)
    located = df.select(
        pl.col("terminal_lat").is_not_null() & pl.col("terminal_lon").is_not_null()
    ).to_series()
    # The previous fix's time: the latest located row *with a time* (a null masked
    # value is skipped by the window's forward fill).
    timed = located & df.get_column("txn_time").is_not_null()
    idx = {}
    for name, flag in (("_hop_prev", located), ("_hop_prev_t", timed)):
        prev = previous_flagged(group, sub, flag.to_numpy())
        ptr = pl.Series(name, prev).replace(-1, None)
        same = serial.gather(ptr.fill_null(0)).eq_missing(serial) | ptr.is_null()
        if not same.all():
            return df.with_columns(hop_km()).with_columns(hop_speed_kmh())  # hash collision
        idx[name] = ptr
    out = df.with_columns(*idx.values())
    p, pt = pl.col("_hop_prev"), pl.col("_hop_prev_t")
    out = out.with_columns(
        hop_km(pl.col("terminal_lat").gather(p), pl.col("terminal_lon").gather(p))
    )
    return out.with_columns(hop_speed_kmh(pl.col("txn_time").gather(pt))).drop(
        "_hop_prev", "_hop_prev_t"
    )


def with_stan_chains(df: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
    """Add ``stan_chain`` and ``stan_chain_return`` (:func:`kernels.stan_chains`).

    One device has one STAN counter (domain §1 #2 (b), §4.1 DE11): a terminal id whose
    messages return to an earlier, separately running counter is used by two devices.
    Reversals are left out (a reversal may carry the STAN of the message it reverses),
    as are rows without a 6-digit STAN. Takes and returns a materialised frame sorted by
    ``(terminal_id, txn_time)``; ``stan_chain`` is the chain index within the terminal
    (-1 when left out).
    """
    c = config["cloned_terminal"]
    stan = df.get_column("stan").cast(pl.Int64, strict=False)
    keep = stan.is_not_null() & (df.get_column("txn_type") != "reversal").fill_null(True)
    codes = stan.zip_with(keep, pl.Series([-1], dtype=pl.Int64)).fill_null(-1)
    if df.height == 0:
        return df.with_columns(
            pl.lit(-1, dtype=pl.Int64).alias("stan_chain"),
            pl.lit(False).alias("stan_chain_return"),
        )
    group = _group_codes(df.get_column("terminal_id"))
    order = np.arange(df.height, dtype=np.int64)  # rows are in time order within a terminal
    chain, back = stan_chains(
        group,
        order,
        codes.to_numpy(),
        int(c["stan_chain_max_gap"]),
        int(c["stan_chain_min_len"]),
    )
    return df.with_columns(pl.Series("stan_chain", chain), pl.Series("stan_chain_return", back))
