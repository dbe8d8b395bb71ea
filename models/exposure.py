"""PAN exposure: card numbers in fields that must not carry them.

Ingest replaces every card-number-like digit run in free text (terminal-event
``detail``, the registry's ``merchant_name``, unknown extra columns) by
:data:`features.schema.PAN_REDACTION_MARKER`. Each marker is a card number that a
terminal (or its merchant's systems) put where no card number may be (PCI DSS
3.3-3.5, domain.md §5): this detector counts them per terminal and day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

import polars as pl

from features.schema import DETECTION_SCHEMA, MAX_EVIDENCE, PAN_REDACTION_MARKER
from models.compromise import reason
from models.compromise.params import params_from_config

BEHAVIOUR = "pan_exposure"

#: Columns of the frame of free texts the detector reads.
TEXTS_SCHEMA = pl.Schema(
    {
        "terminal_id": pl.String(),
        "source": pl.String(),
        "evidence_id": pl.String(),
        "text": pl.String(),
    }
)


@dataclass(frozen=True)
class ExposureParams:
    """Thresholds of the PAN-exposure detector (``[pan_exposure]``).

    Parameters
    ----------
    min_markers : int
        Smallest number of redacted card numbers per terminal and day that is flagged.
    """

    min_markers: int = 1

    def __post_init__(self) -> None:
        if self.min_markers < 1:
            raise ValueError(f"pan_exposure min_markers must be >= 1; got {self.min_markers}")

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> ExposureParams:
        """Parameters from a loaded thresholds config (section ``pan_exposure``)."""
        return params_from_config(cls, BEHAVIOUR, config)


def marker_count() -> pl.Expr:
    """Number of redaction markers in ``text``."""
    return (
        pl.col("text")
        .str.count_matches(PAN_REDACTION_MARKER, literal=True)
        .fill_null(0)
        .cast(pl.Int64)
        .alias("marker_count")
    )


def exposure_texts(
    events: pl.DataFrame | None,
    txns: pl.DataFrame | None,
    registry: pl.DataFrame | None,
    as_of: date,
) -> pl.DataFrame:
    """The free texts of day ``as_of`` in which card numbers may have been redacted.

    Parameters
    ----------
    events : pl.DataFrame or None
        ``terminal_id``, ``event_id``, ``event_time``, ``detail``, ``extra``.
    txns : pl.DataFrame or None
        ``terminal_id``, ``txn_id``, ``local_date``, ``extra``.
    registry : pl.DataFrame or None
        ``terminal_id``, ``merchant_name``, ``extra``, ``updated_at``; the version
        current at the end of ``as_of`` counts, on every day it is current.
    as_of : date
        The run date.

    Returns
    -------
    pl.DataFrame
        ``TEXTS_SCHEMA`` rows (``pipelines.detect.leakage`` builds the same in SQL).
    """
    end = datetime.combine(as_of + timedelta(days=1), time())
    parts: list[pl.DataFrame] = []
    if events is not None:
        ev = events.filter(pl.col("event_time").dt.date() == as_of)
        for col in ("detail", "extra"):
            parts.append(
                ev.select(
                    "terminal_id",
                    pl.lit(f"terminal_events.{col}").alias("source"),
                    pl.col("event_id").alias("evidence_id"),
                    pl.col(col).cast(pl.String).alias("text"),
                )
            )
    if txns is not None:
        parts.append(
            txns.filter(pl.col("local_date") == as_of).select(
                "terminal_id",
                pl.lit("transactions.extra").alias("source"),
                pl.col("txn_id").alias("evidence_id"),
                pl.col("extra").cast(pl.String).alias("text"),
            )
        )
    if registry is not None:
        current = (
            registry.filter(pl.col("updated_at") < end)
            .sort("updated_at")
            .group_by("terminal_id", maintain_order=True)
            .last()
        )
        ident = pl.format(
            "registry:{}@{}",
            pl.col("terminal_id"),
            pl.col("updated_at").dt.to_string("%Y-%m-%dT%H:%M:%S"),
        )
        for col in ("merchant_name", "extra"):
            parts.append(
                current.select(
                    "terminal_id",
                    pl.lit(f"terminals.{col}").alias("source"),
                    ident.alias("evidence_id"),
                    pl.col(col).cast(pl.String).alias("text"),
                )
            )
    if not parts:
        return pl.DataFrame(schema=TEXTS_SCHEMA)
    return pl.concat([p.cast(dict(TEXTS_SCHEMA)) for p in parts], how="vertical")


def score_pan_exposure(
    texts: pl.DataFrame, as_of: date, params: ExposureParams | None = None
) -> pl.DataFrame:
    """Detections of ``pan_exposure`` on day ``as_of``.

    Parameters
    ----------
    texts : pl.DataFrame
        ``TEXTS_SCHEMA`` frame of the day (see :func:`exposure_texts`).
    as_of : date
        The run date.
    params : ExposureParams, optional
        Thresholds; defaults when omitted.

    Returns
    -------
    pl.DataFrame
        ``DETECTION_SCHEMA``: one row per terminal with at least ``min_markers``
        redacted card numbers; score ``1 - 0.1 ** count`` (one card number: 0.9).
    """
    params = params or ExposureParams()
    counted = texts.with_columns(marker_count()).filter(pl.col("marker_count") > 0)
    by_source = counted.group_by("terminal_id", "source").agg(
        pl.col("marker_count").sum().alias("n")
    )
    per_terminal = (
        counted.group_by("terminal_id")
        .agg(
            pl.col("marker_count").sum().alias("markers"),
            pl.col("evidence_id").unique(maintain_order=True).head(MAX_EVIDENCE).alias("evidence"),
        )
        .join(
            by_source.sort("source")
            .group_by("terminal_id", maintain_order=True)
            .agg(
                pl.format("{} in {}", pl.col("n"), pl.col("source")).str.join(", ").alias("where")
            ),
            on="terminal_id",
            how="left",
        )
        .filter(pl.col("markers") >= params.min_markers)
        .sort("terminal_id")
    )
    reasons = pl.concat_list(
        reason(
            "pan_in_free_text",
            pl.format(
                "{} card number(s) found and redacted in free text on {} ({}); no field "
                "may carry a card number (minimum {})",
                pl.col("markers"),
                pl.lit(as_of.isoformat()),
                pl.col("where"),
                pl.lit(params.min_markers),
            ),
            pl.col("markers"),
            params.min_markers,
        )
    )
    return per_terminal.select(
        "terminal_id",
        pl.lit(BEHAVIOUR).alias("behaviour"),
        pl.lit(as_of, dtype=pl.Date).alias("day"),
        (1.0 - pl.lit(0.1).pow(pl.col("markers"))).alias("score"),
        reasons.alias("reasons"),
        pl.col("evidence"),
    ).cast(dict(DETECTION_SCHEMA))
