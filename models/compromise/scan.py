"""The statistics of the common-point-of-compromise test: binomial tails (in log space: strong compromises underflow ``sf``), Benjamini-Hochberg adjustment, the multiscale scan of candidate compromise periods per terminal, and explaining away the cards of each selected terminal before the next is judged.

Pure numpy / polars; ``models.compromise`` assembles them.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
from scipy.stats import binom

from features.schema import MAX_EVIDENCE
from models.compromise.inputs import _period_cards, _with_prev_date
from models.compromise.params import NETWORK, CompromiseParams


def binomial_tail(k: np.ndarray, n: np.ndarray, p: float | np.ndarray) -> np.ndarray:
    """One-sided binomial tail ``P(X >= k)`` for ``X ~ Binomial(n, p)``.

    Examples
    --------
    >>> round(float(binomial_tail(np.array([1]), np.array([2]), 0.5)[0]), 2)
    0.75
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if np.any(k < 0) or np.any(n < 0) or np.any(k > n):
        raise ValueError("binomial_tail needs 0 <= k <= n; check the counts passed in")
    return np.where(k <= 0, 1.0, binom.sf(k - 1, n, p))


def log_binomial_tail(k: np.ndarray, n: np.ndarray, p: float | np.ndarray) -> np.ndarray:
    """Natural log of :func:`binomial_tail`, finite where the tail underflows to 0.

    Strong CPPs have tails far below 1e-300: ``binom.sf`` returns 0 for all of them,
    so ordering windows or terminals by it is a tie. Where the tail is too small for
    floating point, ``P(X >= k)`` lies between ``pmf(k)`` and ``pmf(k) / (1 - r)``
    with ``r = (n - k) p / ((k + 1) (1 - p))`` (the terms after ``k`` shrink at least
    geometrically by ``r < 1``); the upper bound is returned there.

    Examples
    --------
    >>> round(float(log_binomial_tail(np.array([1]), np.array([2]), 0.5)[0]), 3)
    -0.288
    >>> bool(log_binomial_tail(np.array([900]), np.array([1000]), 0.01)[0] < -3000)
    True
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    p = np.broadcast_to(np.asarray(p, dtype=np.float64), np.broadcast(k, n).shape)
    tail = binomial_tail(k, n, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (n - k) * p / ((k + 1) * np.maximum(1 - p, 1e-300))
        bound = binom.logpmf(k, n, p) - np.log1p(-np.minimum(r, 1 - 1e-12))
        return np.where(tail > 1e-250, np.log(np.maximum(tail, 1e-300)), bound)


def bh_adjust(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order.

    Examples
    --------
    >>> bh_adjust(np.array([0.01, 0.04, 0.03])).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("bh_adjust needs p-values in [0, 1] without NaN")
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    out = np.empty(m)
    out[order] = q
    return out


def _day_arrays(rows: pl.DataFrame, start: date) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Day index, previous-day index (-1: none or before ``start``) and counts of ``rows``."""
    day = (rows.get_column("local_date") - start).dt.total_days().to_numpy()
    prev = (rows.get_column("prev_date") - start).dt.total_days().fill_null(-1).to_numpy()
    return day, np.maximum(prev, -1), rows.get_column("n_cards").to_numpy()


def _span_counts(rows: pl.DataFrame, start: date, n_days: int) -> np.ndarray:
    """``N[a, b]``: distinct cards over days ``a..b`` (indices from ``start``) of ``rows``.

    ``rows`` are ``local_date``, ``prev_date``, ``n_cards`` of one terminal (or of the
    network): a card counts once in ``[a, b]``, on its first day there, the one whose
    previous visit is before ``a`` (or unknown).
    """
    return _span_matrix(*_day_arrays(rows, start), n_days)


def _span_matrix(day: np.ndarray, prev: np.ndarray, n: np.ndarray, n_days: int) -> np.ndarray:
    """:func:`_span_counts` from day-index arrays."""
    keep = (day >= 0) & (day < n_days)
    by_prev = np.zeros((n_days, n_days + 1))
    # column j = prev + 1: a day before the window (or no previous visit) is column 0
    np.add.at(by_prev, (day[keep], prev[keep] + 1), n[keep])
    first_in = np.cumsum(by_prev, axis=1)[:, :n_days]  # [d, a]: previous visit before a
    upto = np.cumsum(first_in, axis=0)  # [b, a]: sum over d <= b
    # below[a] = sum over d < a of first_in[d, a] = upto[a - 1, a]
    below = np.concatenate([[0.0], upto[np.arange(n_days - 1), np.arange(1, n_days)]])
    spans = (upto - below[None, :]).T  # [a, b]
    return np.where(np.arange(n_days)[None, :] >= np.arange(n_days)[:, None], spans, 0.0)


def _visit_rows(visits: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Day rows (``_with_prev_date``) of the distinct cards in ``visits`` per ``keys``."""
    return _with_prev_date(
        visits.select(*keys, "card_token", pl.col("txn_time").dt.date().alias("local_date")),
        keys,
    )


def _scan_periods(
    visits: pl.DataFrame, visit_days: pl.DataFrame, start: date, n_days: int, min_cards: int
) -> pl.DataFrame:
    """Each terminal's compromise period: the window that is the least likely under
    the network's rate over the same days.

    Windows start on an F-card visit day of the terminal and last 1, 2, 4, ... days
    (:func:`_scan_windows`); in each, ``k`` = F-cards seen there, ``n`` = all cards
    seen there, ``p`` = network F-cards with an exposure visit in the window / network
    cards active in it (domain.md §2.1: the fraction on the dates ``D`` the F-cards
    visited). Only terminals with at least ``min_cards`` F-cards can be CPPs and are
    scanned. Returns ``terminal_id``, ``n`` (cards seen in the period), ``period_start``,
    ``period_end`` and ``n_windows``, the windows the scan could have tried for any
    placement of the F-cards (Bonferroni multiplicity).
    """
    empty = pl.DataFrame(
        schema={
            "terminal_id": pl.String(),
            "n": pl.Int64(),
            "period_start": pl.Date(),
            "period_end": pl.Date(),
            "n_windows": pl.Int64(),
        }
    )
    fraud_rows = _visit_rows(visits, ["terminal_id"])
    scanned = (
        visits.group_by("terminal_id")
        .agg(pl.col("card_token").n_unique().alias("k"))
        .filter(pl.col("k") >= min_cards)
        .get_column("terminal_id")
    )
    if scanned.len() == 0:
        return empty
    fraud_net = _span_counts(_visit_rows(visits, []), start, n_days)
    active_net = _span_counts(visit_days.filter(pl.col("terminal_id") == NETWORK), start, n_days)
    p_net = np.clip(fraud_net / np.maximum(active_net, 1.0), 1e-12, 1.0)
    groups = {}
    for name, frame in (("k", fraud_rows), ("n", visit_days)):
        part = frame.filter(pl.col("terminal_id").is_in(scanned.implode())).sort("terminal_id")
        ids = part.get_column("terminal_id").to_numpy()
        arrays = _day_arrays(part, start)
        cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        bounds = zip(np.r_[0, cuts], np.r_[cuts, ids.size], strict=True)
        groups[name] = {ids[i]: tuple(x[i:j] for x in arrays) for i, j in bounds if j > i}
    out: list[tuple[str, int, int, int, int]] = []
    for terminal in scanned.sort().to_list():
        k_arrays = groups["k"][terminal]
        k_span = _span_matrix(*k_arrays, n_days)
        n_span = _span_matrix(*groups["n"].get(terminal, k_arrays), n_days)
        days = np.unique(k_arrays[0])
        days = days[(days >= 0) & (days < n_days)]
        trading = np.unique(groups["n"].get(terminal, k_arrays)[0])
        a, b, n_windows = _scan_windows(days, trading, n_days)
        k = k_span[a, b]
        n = np.maximum(n_span[a, b], k)
        tail = log_binomial_tail(k, n, p_net[a, b])
        # most significant window (in log space: strong CPPs underflow ``sf``); ties go
        # to more F-cards, then the shorter span
        best = np.lexsort((b - a, -k, tail))[0]
        out.append((terminal, int(a[best]), int(b[best]), n_windows, int(n[best])))
    return pl.DataFrame(
        out, schema=["terminal_id", "a", "b", "n_windows", "n"], orient="row"
    ).select(
        "terminal_id",
        pl.col("n").cast(pl.Int64),
        (pl.lit(start) + pl.duration(days="a")).cast(pl.Date).alias("period_start"),
        (pl.lit(start) + pl.duration(days="b")).cast(pl.Date).alias("period_end"),
        pl.col("n_windows").cast(pl.Int64),
    )


def _scan_windows(
    days: np.ndarray, trading: np.ndarray, n_days: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Candidate windows ``[a, b]`` (day indices) of one terminal and their multiplicity.

    Windows start on a day an F-card visited and last 1, 2, 4, 8, ... days (clipped at
    the terminal's last trading day): a compromise period of any length ``P`` is inside a window of at most
    ``2 P`` days, and the windows that could be tried are the terminal's ``T`` trading
    days times the ``S`` lengths, instead of all ``T (T + 1) / 2`` windows: overlapping
    windows of nearly the same length test almost the same cards, and Bonferroni over
    all of them pays for that redundancy. ``n_windows = min(T S, T (T + 1) / 2)``.
    """
    t = max(int(trading.size), 1)
    first = int(trading.min()) if trading.size else 0
    last = int(trading.max()) if trading.size else n_days - 1
    lengths = 2 ** np.arange(int(np.ceil(np.log2(max(last - first + 1, 1)))) + 1)
    a = np.repeat(days, lengths.size)
    b = np.minimum(a + np.tile(lengths, days.size) - 1, max(last, int(days.max())))
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1], min(t * lengths.size, max(t * (t + 1) // 2, 1))


def _period_index(frame: pl.DataFrame, start: date, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Day indices (from ``start``) of ``frame``'s ``period_start`` and ``period_end``.

    Days before ``start`` (no data there) count as ``start``.
    """
    a = (frame.get_column("period_start") - start).dt.total_days().to_numpy()
    b = (frame.get_column("period_end") - start).dt.total_days().to_numpy()
    return np.clip(a, 0, n_days - 1), np.clip(b, 0, n_days - 1)


def _terminal_tests(
    visits: pl.DataFrame,
    frame: pl.DataFrame,
    removed: pl.DataFrame,
    explained_days: pl.DataFrame,
    active_net: np.ndarray,
    start: date,
) -> pl.DataFrame:
    """k_t, n_t, base rate, lift and (scan-adjusted) binomial tail per terminal.

    Everything is counted over the terminal's compromise period: ``k`` = F-cards not yet
    explained seen at ``t`` then, ``n`` = cards seen at ``t`` then less the explained
    ones, ``p`` = F-cards not yet explained with an exposure visit anywhere then / cards
    active anywhere then less the explained ones. The tail is multiplied by the number
    of windows the period was chosen from (Bonferroni over the scan).
    """
    n_days = active_net.shape[0]
    inside = visits.join(
        frame.select("terminal_id", "period_start", "period_end"), on="terminal_id"
    ).filter(pl.col("txn_time").dt.date().is_between(pl.col("period_start"), pl.col("period_end")))
    per_terminal = inside.group_by("terminal_id").agg(
        pl.col("card_token").n_unique().cast(pl.Int64).alias("k"),
        pl.col("txn_id").sort_by("txn_time").head(MAX_EVIDENCE).alias("evidence"),
    )
    gone = (
        removed.join(frame.select("terminal_id", "period_start", "period_end"), on="terminal_id")
        .filter(pl.col("local_date").is_between(pl.col("period_start"), pl.col("period_end")))
        .group_by("terminal_id")
        .agg(pl.col("card_token").n_unique().cast(pl.Int64).alias("gone"))
    )
    a, b = _period_index(frame, start, n_days)
    fraud_left = _span_counts(_visit_rows(visits, []), start, n_days)[a, b]
    explained = _span_counts(_with_prev_date(explained_days, []), start, n_days)[a, b]
    active = np.maximum(active_net[a, b] - explained, 0.0)
    base = np.where(active > 0, np.minimum(fraud_left / np.maximum(active, 1.0), 1.0), 1.0)
    stats = (
        frame.with_columns(pl.Series("base_rate", base, dtype=pl.Float64))
        .join(per_terminal, on="terminal_id", how="left")
        .join(gone, on="terminal_id", how="left")
        .with_columns(pl.col("k", "gone").fill_null(0))
        # a card seen in its window is also counted in n_t; guard against inconsistent inputs
        .with_columns(pl.max_horizontal(pl.col("n") - pl.col("gone"), "k").alias("n"))
        .drop("gone")
        .sort("terminal_id")
    )
    log_p = np.minimum(
        log_binomial_tail(
            stats["k"].to_numpy(), stats["n"].to_numpy(), stats["base_rate"].to_numpy()
        )
        + np.log(stats["n_windows"].to_numpy()),
        0.0,
    )
    return stats.with_columns(
        (pl.col("k") / (pl.col("n") * pl.col("base_rate"))).fill_nan(0.0).alias("lift"),
        pl.Series("p_value", np.exp(log_p)),
        # ``log_p`` orders the candidates where ``p_value`` underflows to 0
        pl.Series("log_p", log_p),
    )


def _explain_away(
    visits: pl.DataFrame,
    presence: pl.DataFrame,
    frame: pl.DataFrame,
    active_net: np.ndarray,
    start: date,
    params: CompromiseParams,
) -> pl.DataFrame:
    """Select CPPs one at a time; each one's F-cards are explained and leave the data.

    A compromised card also shops at its owner's other usual terminals, so those
    terminals share many F-cards with the real point of compromise and look like
    CPPs too. The terminal that explains the most (smallest tail probability, compared
    in log space so that strong CPPs whose tails underflow are still ordered) is
    taken first; its F-cards are then removed (from ``k``, ``n`` and the base rate)
    before the next terminal is judged, so a terminal is only a CPP on the cards the
    earlier ones do not explain. Candidates must pass the Benjamini-Hochberg bound
    for their rank (``p <= q r / m``), ``k >= min_cards`` and ``lift >= min_lift``.
    """
    m = frame.height
    explained = pl.Series("card_token", [], dtype=pl.String)
    selected: list[pl.DataFrame] = []
    while True:
        left_visits = visits.filter(~pl.col("card_token").is_in(explained.implode()))
        removed = presence.filter(pl.col("card_token").is_in(explained.implode()))
        explained_days = removed.select("card_token", "local_date")
        stats = _terminal_tests(left_visits, frame, removed, explained_days, active_net, start)
        if left_visits.height == 0:
            break
        done = [s.item(0, "terminal_id") for s in selected]
        rank = len(selected) + 1
        candidates = stats.filter(
            ~pl.col("terminal_id").is_in(done)
            & (pl.col("k") >= params.min_cards)
            & (pl.col("lift") >= params.min_lift)
            & (pl.col("log_p") <= np.log(params.fdr_q * rank / m))
        )
        if candidates.height == 0:
            break
        best = candidates.sort(["log_p", "terminal_id"]).head(1)
        selected.append(best.with_columns(pl.lit(True).alias("selected")))
        cards = _period_cards(left_visits, best)
        explained = pl.concat([explained, cards])
    done = [s.item(0, "terminal_id") for s in selected]
    rest = stats.filter(~pl.col("terminal_id").is_in(done)).with_columns(
        pl.lit(False).alias("selected")
    )
    return pl.concat([*selected, rest], how="vertical").sort("terminal_id")
