"""The per-terminal step of a run: plain functions of one terminal partition's frames.

No I/O beyond reading a spilled partition file, nothing shared between terminals,
and no import of DuckDB or scikit-learn: this is the module a worker process of
``pipelines.detect.run`` imports (each worker imports it once per run date, so its
import cost is paid on every core: ~1 s here against ~4 s for
``pipelines.detect.run``), and what a Dask task would run per partition.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from features.daily import terminal_day
from features.events import with_telemetry
from features.schema import MAX_EVIDENCE
from features.transactions import enrich_transactions
from models import rules

#: terminal_day columns the 7/30-day features read.
HISTORY_COLUMNS: tuple[str, ...] = (
    "n_txn",
    "cap_amount",
    "n_cap",
    "n_technical",
    "n_technical_incidents",
    "n_reversal",
    "n_stan_repeat",
    "n_stan_conflict",
    "n_implausible_time",
    "n_fallback",
    "n_just_under_cap",
)


def detect_partition(
    txns: pl.DataFrame | pl.LazyFrame,
    registry: pl.DataFrame | pl.LazyFrame,
    policies: pl.DataFrame,
    config: dict[str, Any],
    implausible: pl.DataFrame | None = None,
    history: pl.DataFrame | None = None,
    telemetry: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-terminal work for one set of terminals: (terminal-day frame, rule detections).

    No I/O and nothing shared between terminals, so it can run per terminal
    partition (e.g. as a Dask task) and the results be concatenated.

    Parameters
    ----------
    txns : DataFrame or LazyFrame
        The terminals' transactions of the day (stored columns; optional
        ``orig_*`` columns from the refund lookup).
    registry : DataFrame or LazyFrame
        Their registry rows (every version known by the end of the day).
    policies : DataFrame
        :func:`features.policy.policy_frame` output.
    config : dict
        Thresholds.
    implausible : DataFrame or None
        ``terminal_id, txn_id, outside_trial`` of clock-skewed rows sent that day.
    history : DataFrame or None
        Their ``terminal_day`` rows of the previous 30 days (:data:`HISTORY_COLUMNS`).
    telemetry : DataFrame or None
        Their telemetry signals of the day (:func:`read_telemetry`).
    """
    enriched = enrich_transactions(txns.lazy(), registry.lazy(), policies, config)
    # In-memory engine: the streaming default is slower on these ordered plans (issue 4).
    day = terminal_day(enriched, config).collect(engine="in-memory")
    day = _with_implausible(day, implausible)
    day = with_telemetry(day, telemetry, config)
    hist = (
        history
        if history is not None
        else pl.DataFrame(
            schema={
                "terminal_id": pl.String,
                "local_date": pl.Date,
                **{c: pl.Int64 for c in HISTORY_COLUMNS},
            }
        )
    )
    day = with_history(day, hist, config)
    detections = rules.detect(day.lazy(), config).collect(engine="in-memory")
    return day, detections


def _with_implausible(day: pl.DataFrame, implausible: pl.DataFrame | None) -> pl.DataFrame:
    """Add ``n_implausible_time``: the rows are evidence of a malfunction (clock skew).

    A row dated outside the terminal's trial window is also, by the contract's
    letter, use outside the trial window (``unregistered_use``); both are reported.
    """
    if implausible is None or implausible.height == 0:
        return day.with_columns(pl.lit(0, dtype=pl.Int64).alias("n_implausible_time"))
    empty = pl.lit([], dtype=pl.List(pl.String))
    per = implausible.group_by("terminal_id", maintain_order=True).agg(
        pl.len().cast(pl.Int64).alias("n_implausible_time"),
        pl.col("outside_trial").sum().cast(pl.Int64).alias("_n_outside"),
        pl.col("txn_id").alias("_odd_ids"),
        pl.col("txn_id").filter(pl.col("outside_trial")).alias("_outside_ids"),
    )
    out = day.join(per, on="terminal_id", how="left")
    n = pl.col("n_implausible_time").fill_null(0)
    n_out = pl.col("_n_outside").fill_null(0)
    return out.with_columns(
        n.alias("n_implausible_time"),
        (pl.col("n_unregistered") + n_out).alias("n_unregistered"),
        pl.when(pl.col("unregistered_reason").is_null() & (n_out > 0))
        .then(pl.lit("implausible_time"))
        .otherwise(pl.col("unregistered_reason"))
        .alias("unregistered_reason"),
        pl.concat_list(pl.col("_odd_ids").fill_null(empty), "ev_malfunction")
        .list.head(MAX_EVIDENCE)
        .alias("ev_malfunction"),
        pl.concat_list("ev_unregistered_use", pl.col("_outside_ids").fill_null(empty))
        .list.head(MAX_EVIDENCE)
        .alias("ev_unregistered_use"),
    ).drop("_odd_ids", "_outside_ids", "_n_outside")


def with_history(day: pl.DataFrame, history: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
    """7- and 30-day features from earlier ``terminal_day`` rows (never raw history).

    ``n_txn_vs_7d`` / ``cap_amount_vs_7d``: log ratio of today to the 7-day daily
    mean (0 without history); ``days_seen_30d``: active days in the last 30;
    ``<symptom>_w``: malfunction symptoms summed over ``[malfunction] window_days``
    days including today.
    """
    as_of = day.get_column("local_date").max() if day.height else None
    w = int(config["malfunction"]["window_days"])
    sums = rules.MALFUNCTION_SYMPTOMS
    fb_sums = rules.FALLBACK_WINDOW_COUNTS
    base = rules.MALFUNCTION_BASELINE
    # Further windowed sums the rules declare: (column, days, output name).
    extra = rules.window_sums(config)
    if "n_technical_incidents" in history.columns:
        # Days stored before the column existed: every technical decline an incident.
        history = history.with_columns(
            pl.col("n_technical_incidents").fill_null(pl.col("n_technical"))
        )
    if history.height == 0 or as_of is None:
        hist = pl.DataFrame(
            schema={
                "terminal_id": pl.String,
                "n_txn_7d": pl.Float64,
                "cap_amount_7d": pl.Float64,
                "n_txn_30d": pl.Float64,
                "days_seen_30d": pl.Int64,
                **{f"_h_{c}": pl.Int64 for c in sums},
                **{f"_h_{c}": pl.Int64 for c in fb_sums},
                **{f"{c}_base": pl.Int64 for c in base},
                **{f"_x_{a}": pl.Int64 for _c, _d, a in extra},
            }
        )
    else:
        recent = pl.col("local_date") > pl.lit(as_of - timedelta(days=7))
        window = pl.col("local_date") > pl.lit(as_of - timedelta(days=w))
        fb_w = int(config["fallback_abuse"]["window_days"])
        fb_window = pl.col("local_date") > pl.lit(as_of - timedelta(days=fb_w))
        hist = history.group_by("terminal_id").agg(
            pl.col("n_txn").filter(recent).sum().cast(pl.Float64).truediv(7.0).alias("n_txn_7d"),
            pl.col("cap_amount")
            .filter(recent)
            .sum()
            .cast(pl.Float64)
            .truediv(7.0)
            .alias("cap_amount_7d"),
            pl.col("n_txn").sum().cast(pl.Float64).truediv(30.0).alias("n_txn_30d"),
            pl.len().cast(pl.Int64).alias("days_seen_30d"),
            *[pl.col(c).filter(window).sum().cast(pl.Int64).alias(f"_h_{c}") for c in sums],
            *[pl.col(c).filter(fb_window).sum().cast(pl.Int64).alias(f"_h_{c}") for c in fb_sums],
            # The terminal's own baseline: the stored days before the window.
            *[pl.col(c).filter(~window).sum().cast(pl.Int64).alias(f"{c}_base") for c in base],
            *[
                pl.col(c)
                .filter(pl.col("local_date") > pl.lit(as_of - timedelta(days=d)))
                .sum()
                .cast(pl.Int64)
                .alias(f"_x_{a}")
                for c, d, a in extra
            ],
        )
    out = day.join(hist, on="terminal_id", how="left")
    has = pl.col("days_seen_30d").fill_null(0) > 0
    return out.with_columns(
        pl.when(has)
        .then(pl.col("n_txn").cast(pl.Float64).log1p() - pl.col("n_txn_7d").log1p())
        .otherwise(0.0)
        .alias("n_txn_vs_7d"),
        pl.when(has)
        .then(
            pl.col("cap_amount").cast(pl.Float64).fill_null(0).log1p()
            - pl.col("cap_amount_7d").log1p()
        )
        .otherwise(0.0)
        .alias("cap_amount_vs_7d"),
        pl.col("days_seen_30d").fill_null(0),
        *[pl.col(f"{c}_base").fill_null(0) for c in base],
        *[(pl.col(c) + pl.col(f"_h_{c}").fill_null(0)).alias(f"{c}_w") for c in sums + fb_sums],
        *[(pl.col(c) + pl.col(f"_x_{a}").fill_null(0)).alias(a) for c, _d, a in extra],
    ).drop([f"_h_{c}" for c in sums + fb_sums] + [f"_x_{a}" for _c, _d, a in extra])


def load_spilled(path: Path) -> pl.DataFrame | None:
    """One partition written by :func:`spill_day_transactions` (``None`` if it has no rows)."""
    files = sorted(Path(path).glob("*.arrow"))
    return pl.read_ipc(files) if files else None


def _detect_frame(
    txns: pl.DataFrame,
    registry: pl.DataFrame,
    pol: pl.DataFrame,
    config: dict[str, Any],
    implausible: pl.DataFrame,
    history: pl.DataFrame,
    telemetry: pl.DataFrame | None,
) -> tuple[pl.DataFrame, pl.DataFrame, int, set[str]]:
    """:func:`detect_partition` plus the row count and the file ids of the input."""
    day, det = detect_partition(txns, registry, pol, config, implausible, history, telemetry)
    return day, det, txns.height, set(txns.get_column("file_id").unique().to_list())


def _detect_spilled(path: Path, *context: Any) -> tuple[pl.DataFrame, pl.DataFrame, int, set[str]]:
    """:func:`_detect_frame` of a spilled partition (runs in a worker process).

    ``context`` is the rest of :func:`_detect_frame`'s arguments (registry, policies,
    config, implausible, history, telemetry of the partition's terminals).
    """
    return _detect_frame(load_spilled(path), *context)
