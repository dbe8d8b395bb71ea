"""Rule detectors: trial policies and documented thresholds applied to terminal-day features.

Each behaviour is a list of :class:`Check` objects evaluated on the frame of
:func:`features.daily.terminal_day` (one row per terminal and local day). A
check that holds contributes a reason ``{code, text, observed, threshold}``
and a score in [0, 1]; a behaviour is detected when one of its *firing*
checks holds (supporting checks only add reasons and score). Scores combine as
a noisy-OR, ``1 - prod(1 - s_i)``. Thresholds come from ``models/thresholds.toml``
(:func:`models.config.load_config`), caps and allowed codes from the policy.

Sign convention (shared with the anomaly model): higher score = more certain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from features.daily import EVIDENCE_BEHAVIOURS
from features.schema import DETECTION_SCHEMA, REASON_STRUCT

#: The per-terminal behaviours the rules judge: the ones whose evidence is
#: per-transaction flags computed in ``features.daily``.
RULE_BEHAVIOURS: tuple[str, ...] = EVIDENCE_BEHAVIOURS


@dataclass(frozen=True)
class Check:
    """One condition of a behaviour, with its reason.

    ``when`` is a boolean expression over terminal-day columns; ``score`` in
    [0, 1] is its contribution when it holds; ``fires`` False marks a
    supporting check that adds a reason but cannot raise the behaviour alone.
    """

    code: str
    when: pl.Expr
    score: pl.Expr
    text: pl.Expr
    observed: pl.Expr
    threshold: pl.Expr
    fires: bool = True


def exceed_score(observed: pl.Expr, threshold: pl.Expr | float) -> pl.Expr:
    """0.5 at the threshold, rising towards 1 as ``observed`` grows: ``1 - 0.5 * t / o``."""
    t = threshold if isinstance(threshold, pl.Expr) else pl.lit(float(threshold))
    o = observed.cast(pl.Float64)
    return (1.0 - 0.5 * t / o.clip(lower_bound=1e-12)).clip(0.0, 1.0)


def below_score(observed: pl.Expr, threshold: pl.Expr | float) -> pl.Expr:
    """0.5 at the threshold, rising towards 1 as ``observed`` falls below it."""
    t = threshold if isinstance(threshold, pl.Expr) else pl.lit(float(threshold))
    return (1.0 - 0.5 * observed.cast(pl.Float64) / t.clip(lower_bound=1e-12)).clip(0.0, 1.0)


def count_score(n: pl.Expr) -> pl.Expr:
    """A hard rule: 0.5 for one occurrence, ``1 - 0.5**n`` for ``n`` (0.75, 0.875, ...)."""
    return 1.0 - pl.lit(0.5).pow(n.cast(pl.Float64).clip(lower_bound=0.0))


def _ln_factorial(k: pl.Expr) -> pl.Expr:
    """``ln k!`` (Stirling series; error below 1e-3 at k = 1, exact 0 at k = 0)."""
    kf = k.cast(pl.Float64).clip(lower_bound=1.0)
    series = (
        kf * kf.log()
        - kf
        + 0.5 * (2.0 * math.pi * kf).log()
        + 1.0 / (12.0 * kf)
        - 1.0 / (360.0 * kf.pow(3))
    )
    return pl.when(k < 1).then(0.0).otherwise(series)


def poisson_surprise(k: pl.Expr, expected: pl.Expr) -> pl.Expr:
    """``-log10 P(X >= k)`` for ``X ~ Poisson(expected)``, 0 when ``k <= expected``.

    Uses ``P(X >= k) <= P(X = k) * (k + 1) / (k + 1 - expected)`` (the tail's
    terms shrink at least geometrically), an upper bound on the probability that
    is tight when ``k`` is well above ``expected``: the surprise is never overstated.
    """
    kf = k.cast(pl.Float64)
    lam = expected.cast(pl.Float64).clip(lower_bound=1e-12)
    log_p = -lam + kf * lam.log() - _ln_factorial(k) + ((kf + 1.0) / (kf + 1.0 - lam)).log()
    return pl.when(kf > lam).then((-log_p / math.log(10.0)).clip(lower_bound=0.0)).otherwise(0.0)


def _pct(e: pl.Expr) -> pl.Expr:
    return (e * 100.0).round(1)


def _yuan(e: pl.Expr) -> pl.Expr:
    return (e.cast(pl.Float64) / 100.0).round(2)


def _f(v: Any) -> pl.Expr:
    return pl.lit(float(v), dtype=pl.Float64)


def _hhmm(minutes: pl.Expr) -> pl.Expr:
    h = (minutes // 60).cast(pl.String).str.pad_start(2, "0")
    m = (minutes % 60).cast(pl.String).str.pad_start(2, "0")
    return pl.format("{}:{}", h, m)


def _night_business() -> pl.Expr:
    """The policy's business hours include 02:00 (a night business: night use is normal)."""
    s, e, m = pl.col("hours_start_min"), pl.col("hours_end_min"), pl.lit(120)
    inside = pl.when(s < e).then((m >= s) & (m < e)).otherwise((m >= s) | (m < e))
    return (s.is_not_null() & e.is_not_null() & inside).fill_null(False)


# ---------------------------------------------------------------------------
# Checks per behaviour
# ---------------------------------------------------------------------------


def relocation_checks(cfg: dict[str, Any]) -> list[Check]:
    """Away from the registered address, or impossible travel (domain §1 #1)."""
    c = cfg["relocation"]
    # Judge the registered device's own located messages when it reported any (a clone
    # used elsewhere is cloned_terminal, not the terminal moving); else all of them
    # (a replacement device, or no serial reported).
    own = pl.col("n_located_own") > 0
    n_loc = pl.when(own).then(pl.col("n_located_own")).otherwise(pl.col("n_located"))
    n_out = (
        pl.when(own).then(pl.col("n_outside_geofence_own")).otherwise(pl.col("n_outside_geofence"))
    )
    dist = pl.when(own).then(pl.col("distance_p50_own_km")).otherwise(pl.col("distance_p50_km"))
    share = n_out / n_loc.cast(pl.Float64)
    fence_km = pl.col("geofence_m") / 1000.0
    return [
        Check(
            "outside_geofence",
            (n_out >= int(c["min_outside"])) & (share >= float(c["min_outside_share"])),
            exceed_score(dist, fence_km),
            pl.format(
                "reported location {} km from the registered address (median of {} of {} "
                "located transactions outside; max {} km; geofence {} m)",
                dist.round(1),
                n_out,
                n_loc,
                pl.col("distance_max_km").round(1),
                pl.col("geofence_m").round(0).cast(pl.Int64),
            ),
            dist,
            fence_km,
        ),
        Check(
            "impossible_travel",
            pl.col("n_impossible_hops") >= int(c["min_impossible_hops"]),
            exceed_score(pl.col("max_speed_kmh"), float(c["max_speed_kmh"])),
            pl.format(
                "implied travel speed {} km/h between consecutive transactions ({} hops over "
                "{} km/h)",
                pl.col("max_speed_kmh").round(0),
                pl.col("n_impossible_hops"),
                _f(c["max_speed_kmh"]).round(0),
            ),
            pl.col("max_speed_kmh"),
            _f(c["max_speed_kmh"]),
        ),
        Check(
            "telemetry_outside_geofence",
            (pl.col("n_event_outside_geofence") >= int(c["min_outside"]))
            & (
                pl.col("n_event_outside_geofence") / pl.col("n_event_located").cast(pl.Float64)
                >= float(c["min_outside_share"])
            ),
            exceed_score(pl.col("event_distance_p50_km"), fence_km),
            pl.format(
                "terminal-management location reports {} km from the registered address "
                "(median of {} of {} located events outside; geofence {} m)",
                pl.col("event_distance_p50_km").round(1),
                pl.col("n_event_outside_geofence"),
                pl.col("n_event_located"),
                pl.col("geofence_m").round(0).cast(pl.Int64),
            ),
            pl.col("event_distance_p50_km"),
            fence_km,
        ),
        Check(
            "network_moved",
            pl.col("n_network_moved") >= 1,
            pl.lit(0.6),
            pl.format(
                "fixed-site terminal now attaches to location area {} and IP network {}.x.x, "
                "not its usual {} and {}.x.x of {} earlier days (moved; no GPS needed)",
                pl.col("event_lac"),
                pl.col("event_ip_network"),
                pl.col("base_lac"),
                pl.col("base_ip_network"),
                pl.col("base_days"),
            ),
            pl.col("n_network_moved").cast(pl.Float64),
            _f(1),
        ),
    ]


def cloned_terminal_checks(cfg: dict[str, Any]) -> list[Check]:
    """One terminal id used by two devices at once (domain §1 #2)."""
    c = cfg["cloned_terminal"]
    net = int(c["min_network_back_switches"])
    return [
        Check(
            "two_devices",
            (pl.col("n_serials") >= int(c["min_serials"]))
            & (pl.col("n_serial_back_switch") >= int(c["min_back_switches"])),
            exceed_score(pl.col("n_serials"), _f(c["min_serials"] - 0.5)),
            pl.format(
                "{} device serials on one terminal id in a day, switching back and forth {} "
                "times (threshold {} serials)",
                pl.col("n_serials"),
                pl.col("n_serial_back_switch"),
                pl.lit(int(c["min_serials"])),
            ),
            pl.col("n_serials").cast(pl.Float64),
            _f(c["min_serials"]),
        ),
        Check(
            "two_devices_signed_on",
            (pl.col("n_event_serials") >= int(c["min_serials"]))
            & (pl.col("n_event_serial_back_switch") >= int(c["min_back_switches"])),
            exceed_score(pl.col("n_event_serials"), _f(c["min_serials"] - 0.5)),
            pl.format(
                "{} device serials signed on / reported under one terminal id in a day, "
                "alternating {} times (terminal-management telemetry; threshold {} serials)",
                pl.col("n_event_serials"),
                pl.col("n_event_serial_back_switch"),
                pl.lit(int(c["min_serials"])),
            ),
            pl.col("n_event_serials").cast(pl.Float64),
            _f(c["min_serials"]),
        ),
        Check(
            "stan_counters",
            pl.col("n_stan_returns") >= int(c["min_stan_returns"]),
            exceed_score(pl.col("n_stan_returns"), _f(c["min_stan_returns"] - 0.5)),
            pl.format(
                "{} STAN counters interleave on one terminal id: messages return {} times to "
                "an earlier counter while another runs (one device has one counter; "
                "threshold {} returns)",
                pl.col("n_stan_counters"),
                pl.col("n_stan_returns"),
                pl.lit(int(c["min_stan_returns"])),
            ),
            pl.col("n_stan_returns").cast(pl.Float64),
            _f(c["min_stan_returns"]),
        ),
        Check(
            "stan_conflict",
            pl.col("n_stan_conflict") >= int(c["min_stan_conflicts"]),
            count_score(pl.col("n_stan_conflict") / 2),
            pl.format(
                "{} messages reuse a STAN with a different amount or card (threshold {})",
                pl.col("n_stan_conflict"),
                pl.lit(int(c["min_stan_conflicts"])),
            ),
            pl.col("n_stan_conflict").cast(pl.Float64),
            _f(c["min_stan_conflicts"]),
            fires=False,
        ),
        Check(
            "network_interleaving",
            (pl.col("n_ips") >= 2) & (pl.col("n_ip_back_switch") >= net),
            exceed_score(pl.col("n_ip_back_switch"), _f(net)),
            pl.format(
                "{} IP addresses alternate back and forth {} times in a day (two sessions at "
                "once; threshold {})",
                pl.col("n_ips"),
                pl.col("n_ip_back_switch"),
                pl.lit(net),
            ),
            pl.col("n_ip_back_switch").cast(pl.Float64),
            _f(net),
            fires=False,
        ),
        Check(
            "serial_mismatch",
            pl.col("n_serial_mismatch") >= 1,
            pl.lit(0.3),
            pl.format(
                "{} of {} messages report a device serial other than the registered one",
                pl.col("n_serial_mismatch"),
                pl.col("n_txn"),
            ),
            pl.col("n_serial_mismatch").cast(pl.Float64),
            _f(1),
            fires=False,
        ),
    ]


def mcc_mismatch_checks(cfg: dict[str, Any]) -> list[Check]:
    """Message MCC differs from the registered one, or switches (domain §1 #3)."""
    c = cfg["mcc_mismatch"]
    return [
        Check(
            "mcc_differs",
            pl.col("n_mcc_mismatch") >= int(c["min_txns"]),
            exceed_score(pl.col("mcc_mismatch_share"), 0.05).clip(0.5, 1.0),
            pl.format(
                "{} of {} transactions sent MCC {} while the registered MCC is {}",
                pl.col("n_mcc_mismatch"),
                pl.col("n_txn"),
                pl.col("mismatch_mcc"),
                pl.col("registered_mcc"),
            ),
            pl.col("n_mcc_mismatch").cast(pl.Float64),
            _f(c["min_txns"]),
        ),
        Check(
            "mcc_switches",
            (pl.col("n_distinct_mcc") >= int(c["min_distinct_mcc"]))
            & (pl.col("n_mcc_mismatch") >= 1),
            pl.lit(0.3),
            pl.format(
                "{} distinct MCCs in one day, {} switches",
                pl.col("n_distinct_mcc"),
                pl.col("n_mcc_switch"),
            ),
            pl.col("n_distinct_mcc").cast(pl.Float64),
            _f(c["min_distinct_mcc"]),
            fires=False,
        ),
    ]


def cash_out_checks(cfg: dict[str, Any]) -> list[Check]:
    """Cash-out indicators (domain §1 #5, #10, #12); they fire together, see :func:`detect`.

    ``round_split`` reads ``n_round_splits`` (:func:`features.splits.round_splits`);
    a frame without it counts none. ``just_under_cap_week`` (near-cap tickets
    over ``window_days``, column ``n_just_under_cap_w``; today's count without
    history) fires alone.
    """
    c = cfg["cash_out"]
    enough = pl.col("n_cap") >= int(c["min_txns"])
    return [
        Check(
            "round_amounts",
            enough & (pl.col("round_share") > float(c["round_share"])),
            exceed_score(pl.col("round_share"), float(c["round_share"])),
            pl.format(
                "{}% of approved purchases are round amounts (threshold {}%)",
                _pct(pl.col("round_share")),
                _pct(_f(c["round_share"])),
            ),
            pl.col("round_share"),
            _f(c["round_share"]),
            fires=False,
        ),
        Check(
            "credit_share",
            enough & (pl.col("credit_share") > float(c["credit_share"])),
            exceed_score(pl.col("credit_share"), float(c["credit_share"])),
            pl.format(
                "{}% of approved purchases on credit cards (threshold {}%)",
                _pct(pl.col("credit_share")),
                _pct(_f(c["credit_share"])),
            ),
            pl.col("credit_share"),
            _f(c["credit_share"]),
            fires=False,
        ),
        Check(
            "few_cards",
            (pl.col("n_cap") >= int(c["top5_min_txns"]))
            & (pl.col("top5_card_share") > float(c["top5_card_share"])),
            exceed_score(pl.col("top5_card_share"), float(c["top5_card_share"])),
            pl.format(
                "the top 5 cards make {}% of {} approved purchases (threshold {}%)",
                _pct(pl.col("top5_card_share")),
                pl.col("n_cap"),
                _pct(_f(c["top5_card_share"])),
            ),
            pl.col("top5_card_share"),
            _f(c["top5_card_share"]),
            fires=False,
        ),
        Check(
            "split_sales",
            pl.col("n_same_card_bursts") >= int(c["min_split_sales"]),
            count_score(pl.col("n_same_card_bursts")),
            pl.format(
                "{} times one card was used {} times within {} min (split sale)",
                pl.col("n_same_card_bursts"),
                pl.lit(int(c["same_card_burst"])),
                pl.lit(int(c["same_card_window_s"]) // 60),
            ),
            pl.col("n_same_card_bursts").cast(pl.Float64),
            _f(1),
            fires=False,
        ),
        Check(
            "round_split",
            pl.col("n_round_splits") >= int(c["min_round_splits"]),
            count_score(pl.col("n_round_splits")),
            pl.format(
                "{} times one card paid in several non-round sales within {} min of each "
                "other that add up to a round figure (split sale)",
                pl.col("n_round_splits"),
                pl.lit(int(c["same_card_window_s"]) // 60),
            ),
            pl.col("n_round_splits").cast(pl.Float64),
            _f(c["min_round_splits"]),
            fires=False,
        ),
        Check(
            "repeat_card",
            pl.col("max_same_card") > int(c["repeat_card_per_day"]),
            exceed_score(pl.col("max_same_card"), _f(c["repeat_card_per_day"])),
            pl.format(
                "one card used {} times in the day (threshold more than {})",
                pl.col("max_same_card"),
                pl.lit(int(c["repeat_card_per_day"])),
            ),
            pl.col("max_same_card").cast(pl.Float64),
            _f(c["repeat_card_per_day"]),
            fires=False,
        ),
        Check(
            "just_under_cap",
            enough & (pl.col("just_under_cap_share") > float(c["just_under_cap_share"])),
            exceed_score(pl.col("just_under_cap_share"), float(c["just_under_cap_share"])),
            pl.format(
                "{}% of approved purchases within {}% below the per-transaction cap of {} yuan "
                "(threshold {}%)",
                _pct(pl.col("just_under_cap_share")),
                _pct(_f(c["just_under_cap_pct"])),
                _yuan(pl.col("max_txn_amount_minor")),
                _pct(_f(c["just_under_cap_share"])),
            ),
            pl.col("just_under_cap_share"),
            _f(c["just_under_cap_share"]),
            fires=False,
        ),
        Check(
            "night_use",
            enough & (pl.col("night_share") > float(c["night_share"])) & ~_night_business(),
            exceed_score(pl.col("night_share"), float(c["night_share"])),
            pl.format(
                "{}% of approved purchases at night, 00:00-05:00 (threshold {}%)",
                _pct(pl.col("night_share")),
                _pct(_f(c["night_share"])),
            ),
            pl.col("night_share"),
            _f(c["night_share"]),
            fires=False,
        ),
        Check(
            "refunds",
            (pl.col("n_unmatched_refund") >= int(c["min_unmatched_refunds"]))
            | (
                (pl.col("n_refund") >= int(c["min_refunds"]))
                & (pl.col("refund_ratio") > float(c["refund_ratio"]))
            ),
            exceed_score(pl.col("refund_ratio").fill_null(1.0), float(c["refund_ratio"])),
            pl.format(
                "{} refunds ({}% of purchases, threshold {}%), {} without a matching purchase",
                pl.col("n_refund"),
                _pct(pl.col("refund_ratio").fill_null(0.0)),
                _pct(_f(c["refund_ratio"])),
                pl.col("n_unmatched_refund"),
            ),
            pl.col("refund_ratio"),
            _f(c["refund_ratio"]),
            fires=False,
        ),
        Check(
            "just_under_cap_week",
            (pl.col("n_just_under_cap") >= 1)
            & (pl.col("n_just_under_cap_w") >= int(c["just_under_cap_week"])),
            count_score(pl.col("n_just_under_cap_w") - int(c["just_under_cap_week"]) + 2),
            pl.format(
                "{} approved purchases within {}% below the per-transaction cap of {} yuan in "
                "{} days, {} today (threshold {} in {} days; repeated near-cap tickets)",
                pl.col("n_just_under_cap_w"),
                _pct(_f(c["just_under_cap_pct"])),
                _yuan(pl.col("max_txn_amount_minor")),
                pl.lit(int(c["window_days"])),
                pl.col("n_just_under_cap"),
                pl.lit(int(c["just_under_cap_week"])),
                pl.lit(int(c["window_days"])),
            ),
            pl.col("n_just_under_cap_w").cast(pl.Float64),
            _f(c["just_under_cap_week"]),
            fires=False,
        ),
    ]


def card_testing_checks(cfg: dict[str, Any]) -> list[Check]:
    """Many cards, small amounts, high decline rate, sequential card numbers (domain §1 #7)."""
    c = cfg["card_testing"]
    return [
        Check(
            "card_burst",
            pl.col("testing_cards").is_not_null(),
            exceed_score(pl.col("testing_cards"), _f(c["min_distinct_cards"])),
            pl.format(
                "{} distinct cards within {} min, {}% declined, median amount {} yuan "
                "(thresholds: >= {} cards, > {}% declined, < {} yuan)",
                pl.col("testing_cards"),
                pl.lit(int(c["window_s"]) // 60),
                _pct(pl.col("testing_decline_rate")),
                _yuan(pl.col("testing_median_amount")),
                pl.lit(int(c["min_distinct_cards"])),
                _pct(_f(c["decline_rate"])),
                _yuan(_f(c["max_median_amount_minor"])),
            ),
            pl.col("testing_cards").cast(pl.Float64),
            _f(c["min_distinct_cards"]),
        ),
        Check(
            "sequential_cards",
            pl.col("n_sequential_cards") >= int(c["min_sequential_cards"]),
            exceed_score(pl.col("n_sequential_cards"), _f(c["min_sequential_cards"])),
            pl.format(
                "{} cards of one BIN in sequence within {} min: last-4 digits in a fixed step "
                "(<= {}) or rising by 1 to {} in order of use, >= {} in a run",
                pl.col("n_sequential_cards"),
                pl.lit(int(c["window_s"]) // 60),
                pl.lit(int(c["max_last4_gap"])),
                pl.lit(int(c["max_last4_step"])),
                pl.lit(int(c["min_incrementing_run"])),
            ),
            pl.col("n_sequential_cards").cast(pl.Float64),
            _f(c["min_sequential_cards"]),
        ),
    ]


def fallback_abuse_checks(cfg: dict[str, Any]) -> list[Check]:
    """Chip cards read by stripe, or manual key entry (domain §1 #8, #9)."""
    c = cfg["fallback_abuse"]
    modes = "/".join(c["entry_modes"])
    stripe = c.get("chip_card_stripe_modes", [])
    if stripe and c.get("chip_modes"):
        # a swipe counts only for a card this terminal reads by chip (thresholds.toml)
        modes += f", or swipe {'/'.join(stripe)} of a card read here by chip"
    return [
        Check(
            "fallback_rate",
            (pl.col("n_fallback") >= int(c["min_txns"]))
            & (pl.col("fallback_share") > float(c["rate"])),
            exceed_score(pl.col("fallback_share"), float(c["rate"]) * 5),
            pl.format(
                "{} of {} approved card reads by chip fallback or manual entry ({}), {}% "
                "(threshold {}%)",
                pl.col("n_fallback"),
                pl.col("n_approved"),
                pl.lit(modes),
                _pct(pl.col("fallback_share")),
                _pct(_f(c["rate"])),
            ),
            pl.col("fallback_share"),
            _f(c["rate"]),
        ),
        Check(
            "repeated_fallback",
            (pl.col("n_fallback") >= 1) & (pl.col("n_fallback_w") >= int(c["min_txns_window"])),
            count_score(pl.col("n_fallback_w") - int(c["min_txns_window"]) + 1),
            pl.format(
                "{} approved card reads by chip fallback or manual entry ({}) in {} days, {} "
                "today (threshold {} in {} days; any approved fallback is non-compliant)",
                pl.col("n_fallback_w"),
                pl.lit(modes),
                pl.lit(int(c["window_days"])),
                pl.col("n_fallback"),
                pl.lit(int(c["min_txns_window"])),
                pl.lit(int(c["window_days"])),
            ),
            pl.col("n_fallback_w").cast(pl.Float64),
            _f(c["min_txns_window"]),
        ),
    ]


_UNREGISTERED_TEXT = {
    "unknown_terminal": "terminal id is not in the registry",
    "before_registration": "used before its first registry entry",
    "suspended": "used while suspended",
    "terminated": "used after termination",
    "before_activation": "used before activation",
    "before_trial": "used before the trial start",
    "after_trial": "used after the trial end",
    "implausible_time": "transactions dated outside the trial window (clock skew)",
}


def unregistered_use_checks(cfg: dict[str, Any]) -> list[Check]:
    """Unknown terminal id or use outside the activation / trial window (domain §1 #11)."""
    c = cfg["unregistered_use"]
    text = pl.col("unregistered_reason").replace_strict(
        _UNREGISTERED_TEXT, default=pl.col("unregistered_reason")
    )
    return [
        Check(
            "unregistered",
            pl.col("n_unregistered") >= int(c["min_txns"]),
            count_score(pl.col("n_unregistered")),
            pl.format("{}: {} transactions", text, pl.col("n_unregistered")),
            pl.col("n_unregistered").cast(pl.Float64),
            _f(c["min_txns"]),
        )
    ]


def trial_limit_breach_checks(cfg: dict[str, Any]) -> list[Check]:
    """Amount or count caps of the trial policy exceeded (contract policies)."""
    m = int(cfg["trial_limit_breach"]["min_breaches"])
    return [
        Check(
            "txn_cap",
            pl.col("n_over_txn_cap") >= m,
            exceed_score(pl.col("max_over_cap_amount"), pl.col("max_txn_amount_minor")),
            pl.format(
                "{} transactions over the per-transaction cap; largest {} yuan (cap {} yuan)",
                pl.col("n_over_txn_cap"),
                _yuan(pl.col("max_over_cap_amount")),
                _yuan(pl.col("max_txn_amount_minor")),
            ),
            pl.col("max_over_cap_amount").cast(pl.Float64),
            pl.col("max_txn_amount_minor").cast(pl.Float64),
        ),
        Check(
            "daily_amount_cap",
            pl.col("n_over_daily_amount") >= m,
            exceed_score(pl.col("cap_amount"), pl.col("max_daily_amount_minor")),
            pl.format(
                "daily approved amount {} yuan (cap {} yuan)",
                _yuan(pl.col("cap_amount")),
                _yuan(pl.col("max_daily_amount_minor")),
            ),
            pl.col("cap_amount").cast(pl.Float64),
            pl.col("max_daily_amount_minor").cast(pl.Float64),
        ),
        Check(
            "daily_count_cap",
            pl.col("n_over_daily_count") >= m,
            exceed_score(pl.col("n_cap"), pl.col("max_daily_txn_count")),
            pl.format(
                "{} approved transactions in the day (cap {})",
                pl.col("n_cap"),
                pl.col("max_daily_txn_count"),
            ),
            pl.col("n_cap").cast(pl.Float64),
            pl.col("max_daily_txn_count").cast(pl.Float64),
        ),
        Check(
            "same_card_cap",
            pl.col("n_over_same_card") >= m,
            exceed_score(pl.col("max_same_card"), pl.col("max_same_card_per_day")),
            pl.format(
                "one card used {} times in the day (cap {})",
                pl.col("max_same_card"),
                pl.col("max_same_card_per_day"),
            ),
            pl.col("max_same_card").cast(pl.Float64),
            pl.col("max_same_card_per_day").cast(pl.Float64),
        ),
    ]


def disallowed_use_checks(cfg: dict[str, Any]) -> list[Check]:
    """Card type, transaction type, entry mode or hours the policy forbids (contract)."""
    c = cfg["disallowed_use"]
    m = int(c["min_txns"])
    entry = pl.col("n_disallowed_entry_mode_effective")
    return [
        Check(
            "card_type",
            pl.col("n_disallowed_card_type") >= m,
            count_score(pl.col("n_disallowed_card_type")),
            pl.format(
                "{} transactions with card type {}, which the policy does not allow",
                pl.col("n_disallowed_card_type"),
                pl.col("disallowed_card_type_value"),
            ),
            pl.col("n_disallowed_card_type").cast(pl.Float64),
            _f(m),
        ),
        Check(
            "txn_type",
            pl.col("n_disallowed_txn_type") >= m,
            count_score(pl.col("n_disallowed_txn_type")),
            pl.format(
                "{} transactions of type {}, which the policy does not allow",
                pl.col("n_disallowed_txn_type"),
                pl.col("disallowed_txn_type_value"),
            ),
            pl.col("n_disallowed_txn_type").cast(pl.Float64),
            _f(m),
        ),
        Check(
            "entry_mode",
            entry >= m,
            count_score(entry),
            pl.format(
                "{} transactions with entry mode {}, which the policy does not allow",
                entry,
                pl.col("disallowed_entry_mode_value"),
            ),
            entry.cast(pl.Float64),
            _f(m),
        ),
        Check(
            "hours",
            pl.col("n_outside_hours") >= int(c["min_outside_hours"]),
            count_score(pl.col("n_outside_hours") - int(c["min_outside_hours"]) + 1),
            pl.format(
                "{} transactions outside business hours {}-{}",
                pl.col("n_outside_hours"),
                _hhmm(pl.col("hours_start_min")),
                _hhmm(pl.col("hours_end_min")),
            ),
            pl.col("n_outside_hours").cast(pl.Float64),
            _f(c["min_outside_hours"]),
        ),
    ]


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


#: Daily counts the fallback rule sums over ``[fallback_abuse] window_days``.
FALLBACK_WINDOW_COUNTS: tuple[str, ...] = ("n_fallback",)


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
