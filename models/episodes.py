"""Flag episodes: merge one day's detections into the ``flags`` of earlier days.

A detection of behaviour B at terminal T on day D extends the flag of the same
T and B whose ``[first_seen, last_seen]`` lies within ``gap_days`` of D, else it
opens a new flag with ``flag_id`` = first 16 hex of sha256("T|B|D"). Extending
keeps the higher score, the reasons of the strongest day (ties: the newer
day), and up to 50 evidence ids (older first, then new; no repeats). Status
follows the latest analyst disposition: confirmed and dismissed stay so,
snoozed stays snoozed until ``snooze_until`` and is then open again. Re-running
a day gives the same flags.

Frames here hold ``reasons`` as ``List(REASON_STRUCT)`` and ``evidence`` as
``List(String)``; converting to the JSON columns of the table is the caller's job.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from typing import Any

import polars as pl

from features.schema import BEHAVIOURS, DETECTION_SCHEMA, MAX_EVIDENCE, REASON_STRUCT

#: Flag frame as handled in memory (``reasons`` / ``evidence`` as lists).
FLAG_FRAME_SCHEMA = pl.Schema(
    {
        "flag_id": pl.String(),
        "terminal_id": pl.String(),
        "merchant_id": pl.String(),
        "behaviour": pl.String(),
        "category": pl.String(),
        "score": pl.Float64(),
        "severity": pl.String(),
        "first_seen": pl.Date(),
        "last_seen": pl.Date(),
        "reasons": pl.List(REASON_STRUCT),
        "evidence": pl.List(pl.String()),
        "status": pl.String(),
        "run_id": pl.String(),
    }
)

DISPOSITION_FRAME_SCHEMA = pl.Schema(
    {
        "flag_id": pl.String(),
        "decision": pl.String(),
        "decided_at": pl.Datetime("us"),
        "snooze_until": pl.Date(),
    }
)


def flag_id(terminal_id: str, behaviour: str, first_seen: date) -> str:
    """Stable id of the episode that starts on ``first_seen``.

    Examples
    --------
    >>> flag_id("T0000001", "relocation", date(2026, 3, 1))
    'abfcd23ef8c43cc6'
    """
    key = f"{terminal_id}|{behaviour}|{first_seen.isoformat()}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def severity(score: pl.Expr, config: dict[str, Any]) -> pl.Expr:
    """Severity word from a score, thresholds from ``config["episodes"]``."""
    e = config["episodes"]
    return (
        pl.when(score >= float(e["severity_critical"]))
        .then(pl.lit("critical"))
        .when(score >= float(e["severity_high"]))
        .then(pl.lit("high"))
        .when(score >= float(e["severity_medium"]))
        .then(pl.lit("medium"))
        .otherwise(pl.lit("low"))
    )


def status_from_dispositions(
    flags: pl.DataFrame, dispositions: pl.DataFrame | None, as_of: date
) -> pl.DataFrame:
    """Set ``status`` of ``flags`` from each flag's latest disposition as of ``as_of``.

    confirmed / dismissed stay; snoozed holds while ``as_of <= snooze_until``
    (no date = indefinitely), then the flag is open again. Flags without a
    disposition keep their status.
    """
    if dispositions is None or dispositions.height == 0:
        return flags
    latest = (
        dispositions.select(DISPOSITION_FRAME_SCHEMA.names())
        .cast(dict(DISPOSITION_FRAME_SCHEMA))
        .sort("flag_id", "decided_at")
        .group_by("flag_id", maintain_order=True)
        .last()
    )
    out = flags.join(latest, on="flag_id", how="left")
    snoozing = pl.col("snooze_until").is_null() | (pl.lit(as_of) <= pl.col("snooze_until"))
    status = (
        pl.when(pl.col("decision").is_in(["confirmed", "dismissed"]))
        .then(pl.col("decision"))
        .when(pl.col("decision") == "snoozed")
        .then(pl.when(snoozing).then(pl.lit("snoozed")).otherwise(pl.lit("open")))
        .otherwise(pl.col("status"))
    )
    return out.with_columns(status.alias("status")).drop("decision", "decided_at", "snooze_until")


def _merge_day(
    flags: pl.DataFrame,
    det: pl.DataFrame,
    day: date,
    run_id: str,
    config: dict[str, Any],
    merchants: pl.DataFrame | None,
) -> pl.DataFrame:
    gap = timedelta(days=int(config["episodes"]["gap_days"]))
    det = det.group_by("terminal_id", "behaviour", maintain_order=True).agg(
        pl.col("score").max(),
        pl.col("reasons").sort_by("score", descending=True).first(),
        pl.col("evidence")
        .list.explode(keep_nulls=False, empty_as_null=False)
        .unique(maintain_order=True)
        .head(MAX_EVIDENCE),
    )
    cand = (
        det.select("terminal_id", "behaviour")
        .join(flags, on=["terminal_id", "behaviour"], how="inner")
        .filter(
            (pl.col("last_seen") >= pl.lit(day - gap))
            & (pl.col("first_seen") <= pl.lit(day + gap))
        )
        .sort(
            "terminal_id",
            "behaviour",
            "last_seen",
            "flag_id",
            descending=[False, False, True, False],
        )
        .group_by("terminal_id", "behaviour", maintain_order=True)
        .first()
    )
    old = cand.rename(
        {c: f"old_{c}" for c in cand.columns if c not in ("terminal_id", "behaviour")}
    )
    m = det.join(old, on=["terminal_id", "behaviour"], how="left")
    has_old = pl.col("old_flag_id").is_not_null()
    new_wins = ~has_old | (pl.col("score") >= pl.col("old_score"))
    new_ids = [
        flag_id(t, b, day)
        for t, b in zip(m.get_column("terminal_id"), m.get_column("behaviour"), strict=True)
    ]
    m = m.with_columns(pl.Series("new_id", new_ids, dtype=pl.String))
    out = m.select(
        pl.when(has_old).then(pl.col("old_flag_id")).otherwise(pl.col("new_id")).alias("flag_id"),
        "terminal_id",
        pl.col("old_merchant_id").alias("merchant_id"),
        "behaviour",
        pl.col("behaviour").replace_strict(BEHAVIOURS, default=None).alias("category"),
        pl.max_horizontal("score", "old_score").alias("score"),
        pl.min_horizontal(pl.col("old_first_seen"), pl.lit(day)).alias("first_seen"),
        pl.max_horizontal(pl.col("old_last_seen"), pl.lit(day)).alias("last_seen"),
        pl.when(new_wins)
        .then(pl.col("reasons"))
        .otherwise(pl.col("old_reasons"))
        .alias("reasons"),
        pl.concat_list(
            pl.col("old_evidence").fill_null(pl.lit([], dtype=pl.List(pl.String))), "evidence"
        )
        .list.unique(maintain_order=True)
        .list.head(MAX_EVIDENCE)
        .alias("evidence"),
        pl.col("old_status").fill_null("open").alias("status"),
        pl.lit(run_id).alias("run_id"),
    )
    if merchants is not None and merchants.height:
        out = (
            out.join(
                merchants.select("terminal_id", pl.col("merchant_id").alias("_mid")).unique(
                    "terminal_id", keep="first", maintain_order=True
                ),
                on="terminal_id",
                how="left",
            )
            .with_columns(pl.coalesce("merchant_id", "_mid").alias("merchant_id"))
            .drop("_mid")
        )
    return (
        out.with_columns(severity(pl.col("score"), config).alias("severity"))
        .select(FLAG_FRAME_SCHEMA.names())
        .cast(dict(FLAG_FRAME_SCHEMA))
    )


def merge_detections(
    flags: pl.DataFrame,
    detections: pl.DataFrame,
    as_of: date,
    run_id: str,
    config: dict[str, Any],
    *,
    dispositions: pl.DataFrame | None = None,
    merchants: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The flags touched by ``detections``, merged into the existing ``flags``.

    Parameters
    ----------
    flags : DataFrame
        Existing flags (:data:`FLAG_FRAME_SCHEMA`), e.g. every flag of the
        terminals concerned.
    detections : DataFrame
        :data:`features.schema.DETECTION_SCHEMA` rows, one or more days (merged
        day by day in date order).
    as_of : date
        The run date (snooze expiry is judged against it).
    run_id : str
        Written into every touched flag.
    config : dict
        Thresholds (``episodes`` table).
    dispositions : DataFrame or None
        Analyst decisions (flag_id, decision, decided_at, snooze_until).
    merchants : DataFrame or None
        terminal_id -> merchant_id for new flags.

    Returns
    -------
    DataFrame
        The new or updated flags only (:data:`FLAG_FRAME_SCHEMA`); upsert them by flag_id.
    """
    current = flags.select(FLAG_FRAME_SCHEMA.names()).cast(dict(FLAG_FRAME_SCHEMA))
    detections = detections.select(DETECTION_SCHEMA.names()).cast(dict(DETECTION_SCHEMA))
    touched: list[str] = []
    for (day,), det in detections.sort("day").group_by("day", maintain_order=True):
        merged = _merge_day(current, det, day, run_id, config, merchants)
        touched.extend(merged.get_column("flag_id").to_list())
        current = pl.concat(
            [current.filter(~pl.col("flag_id").is_in(merged.get_column("flag_id"))), merged]
        )
    out = current.filter(pl.col("flag_id").is_in(touched))
    out = status_from_dispositions(out, dispositions, as_of)
    return out.sort("terminal_id", "behaviour", "first_seen").select(FLAG_FRAME_SCHEMA.names())
