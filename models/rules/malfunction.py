"""Malfunction: technical declines, reversals, incidents, reboots, clock skew and STAN repeats that point to a faulty terminal rather than fraud.

Thresholds: ``[malfunction]`` in ``models/thresholds.toml`` (at least 2 indicators; technical rate > 10% with >= 3, reversal ratio > 5% with >= 3, clock skew > 1 day, Poisson surprise against the terminal's own baseline). Domain: ``shared/reference/domain.md`` section 1 rows 11 and 13 (terminal-clock skew is itself a signal [H]; chip-data anomalies [H]); technical response codes in ``[decline_families]``.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from models.rules.common import Check, _f, _pct, count_score, exceed_score, poisson_surprise


def _failing_messages() -> pl.Expr:
    """Today's failing messages: technical declines, reversals, STAN reuses, clock skew."""
    return (
        pl.col("n_technical")
        + pl.col("n_reversal")
        + pl.col("n_stan_repeat")
        + pl.col("n_stan_conflict")
        + pl.col("n_implausible_time")
    )


def _symptom_today() -> pl.Expr:
    """A failing message today (:func:`_failing_messages`)."""
    return _failing_messages() > 0


def malfunction_checks(cfg: dict[str, Any]) -> list[Check]:
    """Technical declines, reversals, duplicate STANs or clock skew beyond normal.

    Counts and rates are over ``window_days`` days (columns ``*_w``, today
    included; today's values when no history is given). The checks are
    indicators: :func:`detect` fires on ``min_indicators`` of them, on a day
    with a symptom, or on massive technical declines alone. ``technical_jump``
    fires alone: technical-decline incidents (outage bursts counted once) far
    above what the terminal's own earlier days (``*_base`` columns, the stored
    days before the window) predict, over the window or over the last
    ``short_window_days`` days (``*_s`` columns). ``repeated_reboots`` fires alone:
    at least ``min_reboots`` device reboots (telemetry, ``n_reboot``) on a day with a
    failing message.
    """
    c = cfg["malfunction"]
    w = int(c["window_days"])
    tech, txn = pl.col("n_technical_w"), pl.col("n_txn_w")
    rev, cap = pl.col("n_reversal_w"), pl.col("n_cap_w")
    tech_rate = tech / txn.cast(pl.Float64)
    rev_ratio = (rev / cap.cast(pl.Float64)).fill_nan(1.0).fill_null(1.0)
    dups = pl.col("n_stan_repeat_w") + pl.col("n_stan_conflict_w")
    # technical_jump: the window's technical incidents against the terminal's own
    # earlier days, shrunk towards the reference rate (thresholds.toml explains).
    incidents = pl.col("n_technical_incidents_w")
    m = float(c["baseline_weight_txns"])
    own_rate = (
        pl.col("n_technical_incidents_base").cast(pl.Float64)
        + float(c["reference_technical_rate"]) * m
    ) / (pl.col("n_txn_base").cast(pl.Float64) + m)
    expected_w = pl.col("n_txn_w").cast(pl.Float64) * own_rate
    jump_w = poisson_surprise(incidents, expected_w)
    # The same test over the last `short_window_days` days (same baseline, same
    # threshold): a fault that started a day or two ago is diluted in the long window.
    ws = int(c["short_window_days"])
    inc_s = pl.col("n_technical_incidents_s")
    expected_s = pl.col("n_txn_s").cast(pl.Float64) * own_rate
    jump_s = poisson_surprise(inc_s, expected_s)
    min_inc, min_sur = int(c["min_incidents"]), float(c["min_surprise"])
    long_ok = (incidents >= min_inc) & (jump_w >= min_sur)
    short_ok = (inc_s >= min_inc) & (jump_s >= min_sur)
    short = short_ok & (~long_ok | (jump_s > jump_w))
    incidents = pl.when(short).then(inc_s).otherwise(incidents)
    jump = pl.when(short).then(jump_s).otherwise(jump_w)
    expected = pl.when(short).then(expected_s).otherwise(expected_w)
    jump_days = pl.when(short).then(pl.lit(ws)).otherwise(pl.lit(w))
    jump_txn = pl.when(short).then(pl.col("n_txn_s")).otherwise(pl.col("n_txn_w"))
    return [
        Check(
            "technical_declines",
            (tech >= int(c["min_technical"])) & (tech_rate > float(c["technical_rate"])),
            exceed_score(tech_rate, float(c["technical_rate"])),
            pl.format(
                "{} technical declines in {} days, {}% of messages (threshold {}%)",
                tech,
                pl.lit(w),
                _pct(tech_rate),
                _pct(_f(c["technical_rate"])),
            ),
            tech_rate,
            _f(c["technical_rate"]),
            fires=False,
        ),
        Check(
            "reversals",
            (rev >= int(c["min_reversals"])) & (rev_ratio > float(c["reversal_ratio"])),
            exceed_score(rev_ratio, float(c["reversal_ratio"])),
            pl.format(
                "{} reversals in {} days, {}% of purchases (threshold {}%)",
                rev,
                pl.lit(w),
                _pct(rev_ratio),
                _pct(_f(c["reversal_ratio"])),
            ),
            rev_ratio,
            _f(c["reversal_ratio"]),
            fires=False,
        ),
        Check(
            "duplicate_stans",
            dups >= int(c["min_stan_repeats"]),
            count_score(dups - int(c["min_stan_repeats"]) + 1),
            pl.format(
                "{} messages in {} days reuse a STAN already used that day (threshold {})",
                dups,
                pl.lit(w),
                pl.lit(int(c["min_stan_repeats"])),
            ),
            dups.cast(pl.Float64),
            _f(c["min_stan_repeats"]),
            fires=False,
        ),
        Check(
            "clock_skew",
            pl.col("n_implausible_time_w") >= 1,
            count_score(pl.col("n_implausible_time_w")),
            pl.format(
                "{} transactions in {} days dated more than {} days away from the rest of "
                "the day's messages (clock skew)",
                pl.col("n_implausible_time_w"),
                pl.lit(w),
                pl.lit(int(c["clock_skew_days"])),
            ),
            pl.col("n_implausible_time_w").cast(pl.Float64),
            _f(1),
            fires=False,
        ),
        Check(
            "technical_jump",
            (long_ok | short_ok) & (pl.col("n_technical_incidents") > 0),
            exceed_score(jump, float(c["min_surprise"])),
            pl.format(
                "{} separate technical-decline incidents (outage bursts counted once) in {} "
                "days over {} messages, where {} were expected from its own earlier days "
                "({} in {} messages) and the reference rate: chance 1 in 10^{} (threshold "
                "10^{})",
                incidents,
                jump_days,
                jump_txn,
                expected.round(2),
                pl.col("n_technical_incidents_base"),
                pl.col("n_txn_base"),
                jump.round(1),
                pl.lit(float(c["min_surprise"])),
            ),
            jump,
            _f(c["min_surprise"]),
        ),
        Check(
            "repeated_reboots",
            (pl.col("n_reboot") >= int(c["min_reboots"])) & _symptom_today(),
            exceed_score(pl.col("n_reboot"), _f(c["min_reboots"])),
            pl.format(
                "the device rebooted {} times in the day (threshold {}; one scheduled "
                "restart a day is normal) and {} of its {} messages failed (technical "
                "decline, reversal, STAN reuse or clock skew)",
                pl.col("n_reboot"),
                pl.lit(int(c["min_reboots"])),
                _failing_messages(),
                pl.col("n_txn"),
            ),
            pl.col("n_reboot").cast(pl.Float64),
            _f(c["min_reboots"]),
        ),
        Check(
            "symptom_families",
            (tech >= int(c["min_technical"]))
            & (rev >= int(c["min_reversals"]))
            & (dups >= int(c["min_stan_repeats"])),
            pl.lit(0.6),
            pl.format(
                "technical declines ({}), reversals ({}) and STAN reuses ({}) all together in {} "
                "days (each at least its minimum count {}, {}, {}; rates of a busy terminal "
                "stay low)",
                tech,
                rev,
                dups,
                pl.lit(w),
                pl.lit(int(c["min_technical"])),
                pl.lit(int(c["min_reversals"])),
                pl.lit(int(c["min_stan_repeats"])),
            ),
            _f(3),
            _f(3),
            fires=False,
        ),
    ]


#: Daily counts the malfunction rule sums over its window (``<symptom>_w`` columns).
MALFUNCTION_SYMPTOMS: tuple[str, ...] = (
    "n_txn",
    "n_cap",
    "n_technical",
    "n_technical_incidents",
    "n_reversal",
    "n_stan_repeat",
    "n_stan_conflict",
    "n_implausible_time",
)


#: Daily counts summed over the stored days before the malfunction window
#: (``<count>_base`` columns): the terminal's own baseline for ``technical_jump``.
MALFUNCTION_BASELINE: tuple[str, ...] = ("n_txn", "n_technical_incidents")


def window_sums(cfg: dict[str, Any]) -> list[tuple[str, int, str]]:
    """Further windowed daily sums the rules read: ``(column, days, output name)``.

    The output is ``column`` summed over ``days`` days, today included
    (``pipelines.detect.run.with_history`` computes it from stored days; a frame
    without it is judged on today's value alone).
    """
    co, mf = int(cfg["cash_out"]["window_days"]), int(cfg["malfunction"]["short_window_days"])
    return [
        ("n_just_under_cap", co, "n_just_under_cap_w"),
        ("n_txn", mf, "n_txn_s"),
        ("n_technical_incidents", mf, "n_technical_incidents_s"),
    ]
