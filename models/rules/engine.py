"""Evaluating the rule families on a terminal-day frame: every :class:`~models.rules.common.Check` of every behaviour, reasons, noisy-OR scores, and the detections table."""

from __future__ import annotations

from typing import Any

import polars as pl

from features.schema import DETECTION_SCHEMA, REASON_STRUCT
from models.rules.card_testing import card_testing_checks
from models.rules.cashout import cash_out_checks
from models.rules.common import RULE_BEHAVIOURS, Check
from models.rules.compliance import (
    disallowed_use_checks,
    trial_limit_breach_checks,
    unregistered_use_checks,
)
from models.rules.devices import cloned_terminal_checks, mcc_mismatch_checks
from models.rules.fallback import FALLBACK_WINDOW_COUNTS, fallback_abuse_checks
from models.rules.location import relocation_checks
from models.rules.malfunction import (
    MALFUNCTION_BASELINE,
    MALFUNCTION_SYMPTOMS,
    _symptom_today,
    malfunction_checks,
    window_sums,
)

#: Terminal-day counts the rules read that a day frame may lack (0 when absent):
#: STAN counters (``features.daily.device_expressions``) and telemetry
#: (``features.events``).
OPTIONAL_COUNTS: tuple[str, ...] = (
    "n_round_splits",
    "n_located_own",
    "n_outside_geofence_own",
    "n_stan_returns",
    "n_stan_counters",
    "n_event_serials",
    "n_event_serial_back_switch",
    "n_event_located",
    "n_event_outside_geofence",
    "n_network_moved",
    "n_reboot",
)


#: Telemetry values used in reason texts only (null when absent).
OPTIONAL_DETAILS: dict[str, pl.DataType] = {
    "distance_p50_own_km": pl.Float64(),
    "event_distance_p50_km": pl.Float64(),
    "event_lac": pl.String(),
    "event_ip_network": pl.String(),
    "base_lac": pl.String(),
    "base_ip_network": pl.String(),
    "base_days": pl.Int64(),
}


CHECKS = {
    "relocation": relocation_checks,
    "cloned_terminal": cloned_terminal_checks,
    "mcc_mismatch": mcc_mismatch_checks,
    "cash_out": cash_out_checks,
    "card_testing": card_testing_checks,
    "fallback_abuse": fallback_abuse_checks,
    "unregistered_use": unregistered_use_checks,
    "trial_limit_breach": trial_limit_breach_checks,
    "disallowed_use": disallowed_use_checks,
    "malfunction": malfunction_checks,
}


def _reason(check: Check) -> pl.Expr:
    return (
        pl.when(check.when)
        .then(
            pl.struct(
                pl.lit(check.code).alias("code"),
                check.text.cast(pl.String).alias("text"),
                check.observed.cast(pl.Float64).alias("observed"),
                check.threshold.cast(pl.Float64).alias("threshold"),
            )
        )
        .otherwise(None)
    )


def behaviour_detections(
    day: pl.LazyFrame,
    behaviour: str,
    checks: list[Check],
    fire: pl.Expr | None = None,
    score: pl.Expr | None = None,
) -> pl.LazyFrame:
    """Rows of ``day`` where ``behaviour`` is detected, as :data:`DETECTION_SCHEMA` columns.

    ``fire`` / ``score`` override "any firing check" / noisy-OR of the checks.
    """
    hits = [c.when.fill_null(False) for c in checks]
    fired = (
        fire
        if fire is not None
        else pl.any_horizontal([h for h, c in zip(hits, checks, strict=True) if c.fires])
    )
    if score is None:
        miss = [
            pl.when(h).then(1.0 - c.score.fill_null(0.5).clip(0.0, 1.0)).otherwise(1.0)
            for h, c in zip(hits, checks, strict=True)
        ]
        # noisy-OR: 1 - prod(1 - s_i), the product as exp(sum(log)).
        score = 1.0 - pl.sum_horizontal([m.log() for m in miss]).exp()
    reasons = pl.concat_list([_reason(c) for c in checks]).list.drop_nulls()
    return day.filter(fired.fill_null(False)).select(
        "terminal_id",
        pl.lit(behaviour).alias("behaviour"),
        pl.col("local_date").alias("day"),
        score.clip(0.0, 1.0).cast(pl.Float64).alias("score"),
        reasons.cast(pl.List(REASON_STRUCT)).alias("reasons"),
        pl.col(f"ev_{behaviour}").cast(pl.List(pl.String)).alias("evidence"),
    )


def _prepare(day: pl.LazyFrame, cfg: dict[str, Any]) -> pl.LazyFrame:
    """Columns the checks need that depend on other behaviours (one cause, one flag)."""
    fb = cfg["fallback_abuse"]
    fallback_fires = (pl.col("n_fallback") >= int(fb["min_txns"])) & (
        pl.col("fallback_share") > float(fb["rate"])
    )
    if not bool(cfg["disallowed_use"].get("fallback_only_in_fallback_abuse", False)):
        fallback_fires = pl.lit(False)
    names = day.collect_schema().names()
    out = day.with_columns(
        pl.when(fallback_fires)
        .then(pl.col("n_disallowed_entry_nonfallback"))
        .otherwise(pl.col("n_disallowed_entry_mode"))
        .alias("n_disallowed_entry_mode_effective"),
    )
    if "n_implausible_time" not in names:
        out = out.with_columns(pl.lit(0, dtype=pl.Int64).alias("n_implausible_time"))
    if "n_technical_incidents" not in names:
        # A frame without incident counts: every technical decline is one (conservative
        # for the bursts of an outage, which then look like separate incidents).
        out = out.with_columns(pl.col("n_technical").alias("n_technical_incidents"))
    if "n_just_under_cap" not in names:
        out = out.with_columns(
            (pl.col("just_under_cap_share").fill_null(0.0) * pl.col("n_cap"))
            .round(0)
            .cast(pl.Int64)
            .alias("n_just_under_cap")
        )
    windowed = [pl.col(c).alias(a) for c, _d, a in window_sums(cfg) if a not in names]
    if windowed:
        out = out.with_columns(windowed)
    base = [
        pl.lit(0, dtype=pl.Int64).alias(f"{c}_base")
        for c in MALFUNCTION_BASELINE
        if f"{c}_base" not in names
    ]
    if base:
        out = out.with_columns(base)
    # Signals a caller may not have computed (older frames, no telemetry): none seen.
    absent = [c for c in OPTIONAL_COUNTS if c not in names]
    if absent:
        out = out.with_columns([pl.lit(0, dtype=pl.Int64).alias(c) for c in absent])
    details = [
        pl.lit(None, dtype=t).alias(c) for c, t in OPTIONAL_DETAILS.items() if c not in names
    ]
    if details:
        out = out.with_columns(details)
    missing = [
        pl.col(c).alias(f"{c}_w")
        for c in (*MALFUNCTION_SYMPTOMS, *FALLBACK_WINDOW_COUNTS)
        if f"{c}_w" not in names
    ]
    if missing:
        out = out.with_columns(missing)
    return out


def detect(day: pl.LazyFrame, config: dict[str, Any]) -> pl.LazyFrame:
    """All rule detections for the terminal-days in ``day`` (:data:`DETECTION_SCHEMA`).

    Parameters
    ----------
    day : LazyFrame
        :func:`features.daily.terminal_day` output (optionally with
        ``n_implausible_time``).
    config : dict
        :func:`models.config.load_config` output.
    """
    day = _prepare(day, config)
    parts = []
    for behaviour in RULE_BEHAVIOURS:
        checks = CHECKS[behaviour](config)
        if behaviour == "cash_out":
            c = config["cash_out"]
            # just_under_cap_week fires alone (thresholds.toml explains); the daily
            # indicators need min_indicators of them on one day.
            week = next(ch for ch in checks if ch.code == "just_under_cap_week")
            daily = [ch for ch in checks if ch.code != "just_under_cap_week"]
            n_ind = pl.sum_horizontal([ch.when.fill_null(False).cast(pl.Int32) for ch in daily])
            week_on = week.when.fill_null(False)
            fire = (n_ind >= int(c["min_indicators"])) | week_on
            score = pl.max_horizontal(
                1.0 - pl.lit(0.5).pow((n_ind - int(c["min_indicators"]) + 1).cast(pl.Float64)),
                pl.when(week_on).then(week.score).otherwise(0.0),
            )
            parts.append(behaviour_detections(day, behaviour, checks, fire, score))
        elif behaviour == "malfunction":
            c = config["malfunction"]
            alone = ("symptom_families", "technical_jump", "repeated_reboots")
            indicators = [ch for ch in checks if ch.code not in alone]
            n_ind = pl.sum_horizontal(
                [ch.when.fill_null(False).cast(pl.Int32) for ch in indicators]
            )
            families = next(ch for ch in checks if ch.code == "symptom_families").when
            jump = next(ch for ch in checks if ch.code == "technical_jump").when
            reboots = next(ch for ch in checks if ch.code == "repeated_reboots").when
            symptom_today = _symptom_today()
            strong = (pl.col("n_technical") >= int(c["strong_technical"])) & (
                pl.col("decline_technical_rate") > float(c["technical_rate"])
            )
            fire = (
                (symptom_today & ((n_ind >= int(c["min_indicators"])) | families.fill_null(False)))
                | strong
                | jump.fill_null(False)
                | reboots.fill_null(False)
            )
            parts.append(behaviour_detections(day, behaviour, checks, fire))
        else:
            parts.append(behaviour_detections(day, behaviour, checks))
    return pl.concat(parts, how="vertical").cast(dict(DETECTION_SCHEMA))
