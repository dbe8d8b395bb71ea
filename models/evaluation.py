"""Terminal-level quality metrics of flags against a truth table.

A terminal counts once per behaviour: it is a true positive for behaviour ``b``
when the truth lists ``b`` for it and some flag of behaviour ``b`` names it.
Everything here is a pure function over polars frames; ``pipelines.analyst.evaluate``
reads the truth file and the store.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import polars as pl

METRICS_SCHEMA = pl.Schema(
    {
        "behaviour": pl.String(),
        "truth_terminals": pl.Int64(),
        "flagged": pl.Int64(),
        "tp": pl.Int64(),
        "fp": pl.Int64(),
        "fn": pl.Int64(),
        "precision": pl.Float64(),
        "recall": pl.Float64(),
        "f1": pl.Float64(),
    }
)


def _pairs(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        pl.col("terminal_id").cast(pl.String), pl.col("behaviour").cast(pl.String)
    ).unique()


def behaviour_metrics(truth: pl.DataFrame, flags: pl.DataFrame) -> pl.DataFrame:
    """Per behaviour: truth terminals, flagged terminals, TP, FP, FN, precision, recall, F1.

    Parameters
    ----------
    truth : pl.DataFrame
        ``terminal_id``, ``behaviour`` (one row per injected behaviour; repeats are fine).
    flags : pl.DataFrame
        ``terminal_id``, ``behaviour`` of the flags.

    Returns
    -------
    pl.DataFrame
        ``METRICS_SCHEMA``, one row per behaviour in the truth or the flags, sorted by name.
        Precision is null when nothing was flagged, recall when nothing was true;
        F1 is 0 when either is 0 or null on a behaviour with truth terminals.

    Examples
    --------
    >>> t = pl.DataFrame({"terminal_id": ["A", "B"], "behaviour": ["x", "x"]})
    >>> f = pl.DataFrame({"terminal_id": ["A", "C"], "behaviour": ["x", "x"]})
    >>> behaviour_metrics(t, f).select("tp", "fp", "fn", "f1").row(0)
    (1, 1, 1, 0.5)
    """
    t = _pairs(truth).with_columns(pl.lit(True).alias("is_true"))
    f = _pairs(flags).with_columns(pl.lit(True).alias("is_flagged"))
    both = t.join(f, on=["terminal_id", "behaviour"], how="full", coalesce=True).with_columns(
        pl.col("is_true", "is_flagged").fill_null(False)
    )
    out = (
        both.group_by("behaviour")
        .agg(
            pl.col("is_true").sum().cast(pl.Int64).alias("truth_terminals"),
            pl.col("is_flagged").sum().cast(pl.Int64).alias("flagged"),
            (pl.col("is_true") & pl.col("is_flagged")).sum().cast(pl.Int64).alias("tp"),
            (~pl.col("is_true") & pl.col("is_flagged")).sum().cast(pl.Int64).alias("fp"),
            (pl.col("is_true") & ~pl.col("is_flagged")).sum().cast(pl.Int64).alias("fn"),
        )
        .with_columns(
            pl.when(pl.col("flagged") > 0)
            .then(pl.col("tp") / pl.col("flagged"))
            .alias("precision"),
            pl.when(pl.col("truth_terminals") > 0)
            .then(pl.col("tp") / pl.col("truth_terminals"))
            .alias("recall"),
        )
        .with_columns(
            pl.when(pl.col("truth_terminals") == 0)
            .then(None)
            .when(pl.col("tp") == 0)
            .then(0.0)
            .otherwise(
                2
                * pl.col("precision")
                * pl.col("recall")
                / (pl.col("precision") + pl.col("recall"))
            )
            .alias("f1")
        )
        .sort("behaviour")
    )
    return out.cast(dict(METRICS_SCHEMA)).select(METRICS_SCHEMA.names())


def macro_f1(metrics: pl.DataFrame) -> float | None:
    """Mean F1 over the behaviours present in the truth (None when there are none)."""
    present = metrics.filter(pl.col("truth_terminals") > 0)
    if present.height == 0:
        return None
    return float(present.get_column("f1").fill_null(0.0).mean())


def clean_false_positive_rate(
    truth: pl.DataFrame, flags: pl.DataFrame, terminals: pl.Series | list[str]
) -> dict[str, Any]:
    """Share of terminals with no injected behaviour that carry any flag.

    ``terminals`` are all terminals known to the store (registry and transactions);
    a terminal is clean when it has no truth row at all.
    """
    known = pl.Series("terminal_id", terminals, dtype=pl.String).unique()
    clean = known.filter(~known.is_in(truth.get_column("terminal_id").cast(pl.String).implode()))
    flagged = flags.get_column("terminal_id").cast(pl.String).unique()
    fp = int(clean.is_in(flagged.implode()).sum())
    return {
        "clean_terminals": clean.len(),
        "clean_flagged": fp,
        "rate": fp / clean.len() if clean.len() else None,
    }


def precision_at_k(truth: pl.DataFrame, flags: pl.DataFrame, k: int) -> dict[str, Any]:
    """Terminal Precision@k: terminals ranked by their highest flag score.

    Ties are broken by ``terminal_id`` so the result is reproducible. When fewer
    than ``k`` terminals are flagged, the precision is over those that are
    (``n`` says how many).
    """
    if k < 1:
        raise ValueError(f"precision_at_k needs k >= 1; got {k}")
    ranked = (
        flags.group_by("terminal_id")
        .agg(pl.col("score").max())
        .sort(["score", "terminal_id"], descending=[True, False])
        .head(k)
    )
    true_ids = truth.get_column("terminal_id").cast(pl.String).unique().implode()
    hits = int(ranked.get_column("terminal_id").is_in(true_ids).sum())
    n = ranked.height
    return {"k": k, "n": n, "hits": hits, "precision": hits / n if n else None}


def days_to_flag(
    truth: pl.DataFrame,
    flags: pl.DataFrame,
    window: tuple[date, date] | None = None,
) -> pl.DataFrame:
    """Per behaviour: days from an injected behaviour's start to its terminal's first flag.

    Each truth row is an episode. Its delay is the earliest ``first_seen`` of the
    terminal's flags of that behaviour still open on or after the episode's ``start`` (a
    flag that ended before it began did not find it), minus that ``start``; 0 means
    flagged on its first day. A terminal's delay is that of its earliest-found episode;
    terminals never flagged (FN) have none. With ``window`` (the first and last run
    date), only episodes starting inside it are timed: a run cannot find an episode
    before it starts, and one dated outside the runs (a terminal clock years off)
    has no meaningful delay.

    Parameters
    ----------
    truth : pl.DataFrame
        ``terminal_id``, ``behaviour``, ``start`` (date).
    flags : pl.DataFrame
        ``terminal_id``, ``behaviour``, ``first_seen``, ``last_seen``.
    window : tuple of date, optional
        First and last run date.

    Returns
    -------
    pl.DataFrame
        ``behaviour``, ``n_timed`` (true terminals with a delay), ``days_median``,
        ``days_max``; one row per behaviour of the truth.

    Examples
    --------
    >>> from datetime import date
    >>> t = pl.DataFrame({"terminal_id": ["A", "B"], "behaviour": "x",
    ...                   "start": [date(2025, 9, 1), date(2025, 9, 3)]})
    >>> f = pl.DataFrame({"terminal_id": ["A", "B"], "behaviour": "x",
    ...                   "first_seen": [date(2025, 9, 1), date(2025, 9, 6)],
    ...                   "last_seen": [date(2025, 9, 2), date(2025, 9, 6)]})
    >>> days_to_flag(t, f).row(0)
    ('x', 2, 1.5, 3)
    """
    keys = ["terminal_id", "behaviour"]
    episodes = truth.select(
        *(pl.col(k).cast(pl.String) for k in keys), pl.col("start").cast(pl.Date)
    ).drop_nulls()
    timed = episodes
    if window is not None:
        timed = episodes.filter(pl.col("start").is_between(*window))
    found = (
        timed.with_row_index("_episode")
        .join(
            flags.select(*(pl.col(k).cast(pl.String) for k in keys), "first_seen", "last_seen"),
            on=keys,
        )
        .filter(pl.col("last_seen") >= pl.col("start"))
        .group_by("_episode", *keys)
        .agg((pl.col("first_seen").min() - pl.col("start").first()).dt.total_days().alias("d"))
        .group_by(keys)
        .agg(pl.col("d").min())
    )
    return (
        episodes.select("behaviour")
        .unique()
        .join(
            found.group_by("behaviour").agg(
                pl.len().cast(pl.Int64).alias("n_timed"),
                pl.col("d").median().alias("days_median"),
                pl.col("d").max().cast(pl.Int64).alias("days_max"),
            ),
            on="behaviour",
            how="left",
        )
        .with_columns(pl.col("n_timed").fill_null(0))
        .sort("behaviour")
    )


def confirmed_precision(dispositions: pl.DataFrame) -> dict[str, Any]:
    """Analyst-confirmed precision: confirmed / (confirmed + dismissed), latest decision per flag."""
    latest = (
        dispositions.filter(pl.col("decision").is_in(["confirmed", "dismissed"]))
        .sort("decided_at")
        .group_by("flag_id")
        .agg(pl.col("decision").last())
    )
    confirmed = int((latest.get_column("decision") == "confirmed").sum())
    decided = latest.height
    return {
        "confirmed": confirmed,
        "dismissed": decided - confirmed,
        "precision": confirmed / decided if decided else None,
    }


def evaluate(
    truth: pl.DataFrame,
    flags: pl.DataFrame,
    terminals: pl.Series | list[str],
    dispositions: pl.DataFrame | None = None,
    ks: tuple[int, ...] = (50, 100),
    window: tuple[date, date] | None = None,
) -> dict[str, Any]:
    """Every metric of ``trialguard evaluate`` as one JSON-ready dictionary.

    Parameters
    ----------
    truth : pl.DataFrame
        ``terminal_id``, ``behaviour`` (and ``start``).
    flags : pl.DataFrame
        ``terminal_id``, ``behaviour``, ``score`` (and ``flag_id``, ``first_seen``,
        ``last_seen``).
    terminals : Series or list of str
        All terminals of the trial (for the clean false-positive rate).
    dispositions : pl.DataFrame, optional
        ``flag_id``, ``decision``, ``decided_at``; analyst-confirmed precision when given.
    ks : tuple of int
        Cut-offs of Precision@k besides the number of truth terminals.
    window : tuple of date, optional
        First and last run date: the episodes :func:`days_to_flag` times.

    Returns
    -------
    dict
        ``behaviours`` (list of per-behaviour rows; with ``days_median`` and
        ``days_max`` of :func:`days_to_flag` when ``truth`` has ``start`` and ``flags``
        have ``first_seen`` and ``last_seen``), ``macro_f1``, ``clean``,
        ``precision_at_k`` (list) and ``analyst`` (or None).
    """
    metrics = behaviour_metrics(truth, flags)
    timed = {"start"} <= set(truth.columns) and {"first_seen", "last_seen"} <= set(flags.columns)
    if timed:
        delays = days_to_flag(truth, flags, window)
        metrics = metrics.join(delays.drop("n_timed"), on="behaviour", how="left")
    n_truth = truth.get_column("terminal_id").n_unique()
    cutoffs = sorted({k for k in (n_truth, *ks) if k >= 1})
    analyst = None
    if dispositions is not None and dispositions.height:
        analyst = confirmed_precision(dispositions)
    return {
        "behaviours": metrics.to_dicts(),
        "macro_f1": macro_f1(metrics),
        "truth_terminals": n_truth,
        "flagged_terminals": flags.get_column("terminal_id").n_unique(),
        "clean": clean_false_positive_rate(truth, flags, terminals),
        "precision_at_k": [precision_at_k(truth, flags, k) for k in cutoffs],
        "analyst": analyst,
    }
