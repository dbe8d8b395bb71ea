"""Per terminal per local day: aggregates (stored in ``terminal_day``) and evidence lists.

:func:`terminal_day` turns enriched transactions (:func:`features.transactions.
enrich_transactions`) into one row per terminal and local day. Its numeric
columns (:data:`AGGREGATE_COLUMNS`) are what the ``terminal_day`` table stores,
so 7- and 30-day features read compact aggregates instead of raw history;
``ev_<behaviour>`` list columns (up to 50 txn_ids each, in time order) are the
evidence rules cite and are not stored.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from features.card_runs import card_runs, card_testing_windows
from features.schema import MAX_EVIDENCE, POLARS_TYPES, TERMINAL_DAY_AGGREGATES
from features.splits import cap_breaches_and_round_splits

#: Registry / peer-group attributes carried per terminal-day (first value of the day).
ATTRIBUTE_COLUMNS: dict[str, pl.DataType] = {
    "merchant_id": pl.String(),
    "registered_mcc": pl.String(),
    "region_code": pl.String(),
    "terminal_kind": pl.String(),
    "policy_key": pl.String(),
}


#: Numeric aggregates stored in ``terminal_day`` (name -> polars type).
AGGREGATE_COLUMNS: dict[str, pl.DataType] = {
    name: POLARS_TYPES[dtype]
    for name, dtype in TERMINAL_DAY_AGGREGATES.items()
    if name != "n_implausible_time"  # counted by the run step (needs other days' files)
}


#: Behaviours whose evidence comes from per-transaction flags.
EVIDENCE_BEHAVIOURS: tuple[str, ...] = (
    "relocation",
    "cloned_terminal",
    "mcc_mismatch",
    "cash_out",
    "card_testing",
    "fallback_abuse",
    "unregistered_use",
    "trial_limit_breach",
    "disallowed_use",
    "malfunction",
)


def evidence_flags(technical_codes: list[str]) -> list[pl.Expr]:
    """One boolean per behaviour: the row is evidence of it."""
    return [
        (pl.col("outside_geofence") | pl.col("impossible_hop")).alias("ev_relocation"),
        (
            pl.col("serial_mismatch")
            | pl.col("serial_switch")
            | pl.col("stan_conflict")
            | pl.col("ip_back_switch")
            | pl.col("cell_back_switch")
            | pl.col("stan_chain_return")
        ).alias("ev_cloned_terminal"),
        (pl.col("mcc_mismatch") | pl.col("mcc_switch")).alias("ev_mcc_mismatch"),
        (
            (
                pl.col("approved")
                & (pl.col("round_amount") | (pl.col("night") & pl.col("credit_card")))
            )
            | pl.col("just_under_cap")
            | pl.col("same_card_burst")
            | pl.col("round_split")
            | pl.col("refund_unmatched")
        ).alias("ev_cash_out"),
        (pl.col("testing_window") | pl.col("sequential_card")).alias("ev_card_testing"),
        (
            pl.col("fallback_entry")
            & pl.col("approved")
            & ~(pl.col("testing_like") | pl.col("sequential_card"))
        ).alias("ev_fallback_abuse"),
        pl.col("unregistered_reason").is_not_null().alias("ev_unregistered_use"),
        (
            pl.col("over_txn_cap")
            | pl.col("over_daily_amount")
            | pl.col("over_daily_count")
            | pl.col("over_same_card")
        ).alias("ev_trial_limit_breach"),
        # A declined attempt is not a use of the terminal: only approved rows count.
        (
            pl.col("approved")
            & (
                pl.col("disallowed_card_type")
                | pl.col("disallowed_txn_type")
                | pl.col("disallowed_entry_mode")
                | pl.col("outside_hours")
            )
        ).alias("ev_disallowed_use"),
        (
            pl.col("response_code").is_in(technical_codes)
            | (pl.col("txn_type") == "reversal")
            | pl.col("stan_repeat")
        ).alias("ev_malfunction"),
    ]


def technical_incidents(gap_s: int) -> pl.Expr:
    """``n_technical_incidents``: the day's technical declines, those within ``gap_s``
    seconds of the previous one counted once (one network outage = one incident).

    A host or line outage fails every attempt in it within minutes; a faulty
    device fails now and then all day. Per-group expression (time order not needed).
    """
    technical = (pl.col("decline_family") == "technical").fill_null(False)
    gaps = pl.col("txn_time").filter(technical).sort().diff().dt.total_seconds()
    return (gaps.fill_null(gap_s + 1) > gap_s).sum().cast(pl.Int64).alias("n_technical_incidents")


def _share(flag: str | pl.Expr, base: pl.Expr | None = None) -> pl.Expr:
    """Mean of a boolean, optionally among rows where ``base`` holds (null when none)."""
    f = pl.col(flag) if isinstance(flag, str) else flag
    if base is None:
        return f.cast(pl.Float64).mean()
    return f.filter(base).cast(pl.Float64).mean()


def _count(flag: str | pl.Expr) -> pl.Expr:
    f = pl.col(flag) if isinstance(flag, str) else flag
    return f.cast(pl.Int64).sum()


def aggregate_expressions() -> list[pl.Expr]:
    """The ``terminal_day`` aggregates, named as in :data:`AGGREGATE_COLUMNS`."""
    ok = pl.col("approved")
    cap = pl.col("cap_txn")
    amt = pl.col("amount_minor")
    cap_amt = amt.filter(cap)
    # Count of each card (null included) among the cap-counting rows; unique_counts is
    # ~3x cheaper per group than value_counts(sort=True), and top_k(5) sums the same
    # 5 largest counts as its sorted head(5) (issue 4).
    card_counts = pl.col("card_token").filter(cap).unique_counts()
    located = pl.col("distance_km").is_not_null()
    purchases = _count(cap)
    n_refund = _count(pl.col("txn_type") == "refund")
    n_reversal = _count(pl.col("txn_type") == "reversal")
    declined = ~ok
    em = pl.col("entry_mode")
    # Approved fallback / manual reads (domain §1 #8: "any approved fallback"); those
    # inside a card-testing burst are the testing itself.
    fallback = (
        pl.col("fallback_entry") & ok & ~(pl.col("testing_like") | pl.col("sequential_card"))
    )
    return [
        pl.len().cast(pl.Int64).alias("n_txn"),
        _count(ok).alias("n_approved"),
        purchases.alias("n_cap"),
        cap_amt.sum().cast(pl.Int64).alias("cap_amount"),
        cap_amt.mean().alias("amount_mean"),
        cap_amt.std().alias("amount_std"),
        cap_amt.median().cast(pl.Float64).alias("amount_p50"),
        cap_amt.quantile(0.9).cast(pl.Float64).alias("amount_p90"),
        cap_amt.max().cast(pl.Int64).alias("amount_max"),
        _share("round_amount", cap).alias("round_share"),
        _share("just_under_cap", cap).alias("just_under_cap_share"),
        _count(pl.col("just_under_cap").filter(cap)).alias("n_just_under_cap"),
        _share("credit_card", cap).alias("credit_share"),
        _share("night", cap).alias("night_share"),
        _share("outside_hours").alias("outside_hours_share"),
        pl.col("card_token").n_unique().cast(pl.Int64).alias("n_cards"),
        card_counts.max().cast(pl.Int64).alias("max_same_card"),
        (card_counts.top_k(5).sum() / purchases).cast(pl.Float64).alias("top5_card_share"),
        _count("same_card_burst").alias("n_same_card_bursts"),
        declined.cast(pl.Float64).mean().alias("decline_rate"),
        *[
            (pl.col("decline_family") == fam)
            .fill_null(False)
            .cast(pl.Float64)
            .mean()
            .alias(f"decline_{fam}_rate")
            for fam in ("card", "pin", "funds", "technical")
        ],
        _count((pl.col("decline_family") == "technical").fill_null(False)).alias("n_technical"),
        n_refund.alias("n_refund"),
        (n_refund / purchases).cast(pl.Float64).alias("refund_ratio"),
        _count("refund_unmatched").alias("n_unmatched_refund"),
        n_reversal.alias("n_reversal"),
        (n_reversal / purchases).cast(pl.Float64).alias("reversal_ratio"),
        _share(em == "05").alias("chip_share"),
        _share(em.is_in(["07", "91"])).alias("contactless_share"),
        _share(em == "03").alias("qr_share"),
        _share(fallback, ok).alias("fallback_share"),
        _count(fallback).alias("n_fallback"),
        _share(em == "01").alias("manual_share"),
        _count("mcc_mismatch").alias("n_mcc_mismatch"),
        _share("mcc_mismatch").alias("mcc_mismatch_share"),
        _count("mcc_switch").alias("n_mcc_switch"),
        pl.col("mcc").n_unique().cast(pl.Int64).alias("n_distinct_mcc"),
        _count(located).alias("n_located"),
        _count("outside_geofence").alias("n_outside_geofence"),
        pl.col("distance_km").median().alias("distance_p50_km"),
        pl.col("distance_km").quantile(0.95).alias("distance_p95_km"),
        pl.col("distance_km").max().alias("distance_max_km"),
        pl.col("geofence_m").max().alias("geofence_m"),
        pl.col("hop_speed_kmh").filter(pl.col("hop_km") >= 1.0).max().alias("max_speed_kmh"),
        _count("impossible_hop").alias("n_impossible_hops"),
        pl.col("device_serial").drop_nulls().n_unique().cast(pl.Int64).alias("n_serials"),
        pl.col("ip_address").drop_nulls().n_unique().cast(pl.Int64).alias("n_ips"),
        pl.col("cell_id").drop_nulls().n_unique().cast(pl.Int64).alias("n_cells"),
        _count("serial_mismatch").alias("n_serial_mismatch"),
        _count("serial_switch").alias("n_serial_switch"),
        _count("serial_back_switch").alias("n_serial_back_switch"),
        _count("ip_back_switch").alias("n_ip_back_switch"),
        _count("cell_back_switch").alias("n_cell_back_switch"),
        _count("stan_repeat").alias("n_stan_repeat"),
        _count("stan_conflict").alias("n_stan_conflict"),
        _count("stan_out_of_order").alias("n_stan_out_of_order"),
        _count(pl.col("unregistered_reason").is_not_null()).alias("n_unregistered"),
        _count("over_txn_cap").alias("n_over_txn_cap"),
        _count("over_daily_amount").alias("n_over_daily_amount"),
        _count("over_daily_count").alias("n_over_daily_count"),
        _count("over_same_card").alias("n_over_same_card"),
        _count(pl.col("disallowed_card_type") & ok).alias("n_disallowed_card_type"),
        _count(pl.col("disallowed_txn_type") & ok).alias("n_disallowed_txn_type"),
        _count(pl.col("disallowed_entry_mode") & ok).alias("n_disallowed_entry_mode"),
        _count(pl.col("disallowed_entry_mode") & ~pl.col("fallback_entry") & ok).alias(
            "n_disallowed_entry_nonfallback"
        ),
        _count(pl.col("outside_hours") & ok).alias("n_outside_hours"),
        pl.col("window_cards").max().cast(pl.Int64).alias("max_cards_window"),
        pl.col("testing_cards_row").max().cast(pl.Int64).alias("testing_cards"),
        pl.col("testing_decl_row").max().alias("testing_decline_rate"),
        pl.col("testing_med_row").min().cast(pl.Float64).alias("testing_median_amount"),
        pl.col("card_token")
        .filter(pl.col("sequential_card"))
        .n_unique()
        .cast(pl.Int64)
        .alias("n_sequential_cards"),
    ]


def device_expressions() -> list[pl.Expr]:
    """Per terminal-day device signals the rules read that are not stored in ``terminal_day``.

    ``n_stan_returns``: messages returning to an earlier, separately running STAN
    counter (:func:`features.sequences.with_stan_chains`); ``n_stan_counters``:
    distinct counters among the day's messages with a STAN. ``n_located_own``,
    ``n_outside_geofence_own``, ``distance_p50_own_km``: the location aggregates over
    the registered device's own messages (serial as registered, or none reported).
    """
    chain = pl.col("stan_chain")
    # The registered device's own rows (serial as registered or not reported): a clone
    # elsewhere is not the terminal moving, as hops are measured per device.
    own = ~pl.col("serial_mismatch")
    located = pl.col("distance_km").is_not_null()
    return [
        _count("stan_chain_return").alias("n_stan_returns"),
        chain.filter(chain >= 0).n_unique().cast(pl.Int64).alias("n_stan_counters"),
        _count(located & own).alias("n_located_own"),
        _count(pl.col("outside_geofence") & own).alias("n_outside_geofence_own"),
        pl.col("distance_km").filter(own).median().alias("distance_p50_own_km"),
    ]


def _detail_expressions() -> list[pl.Expr]:
    """Per terminal-day values used only in reason texts (not stored)."""
    return [
        pl.col("unregistered_reason").drop_nulls().first().alias("unregistered_reason"),
        pl.col("reg_registered_mcc").first().alias("registered_mcc"),
        pl.col("mcc").filter(pl.col("mcc_mismatch")).mode().sort().first().alias("mismatch_mcc"),
        pl.col("max_txn_amount_minor").first().alias("max_txn_amount_minor"),
        pl.col("max_daily_amount_minor").first().alias("max_daily_amount_minor"),
        pl.col("max_daily_txn_count").first().alias("max_daily_txn_count"),
        pl.col("max_same_card_per_day").first().alias("max_same_card_per_day"),
        pl.col("amount_minor").filter(pl.col("over_txn_cap")).max().alias("max_over_cap_amount"),
        pl.col("card_type")
        .filter(pl.col("disallowed_card_type") & pl.col("approved"))
        .mode()
        .sort()
        .first()
        .alias("disallowed_card_type_value"),
        pl.col("txn_type")
        .filter(pl.col("disallowed_txn_type") & pl.col("approved"))
        .mode()
        .sort()
        .first()
        .alias("disallowed_txn_type_value"),
        pl.col("entry_mode")
        .filter(pl.col("disallowed_entry_mode") & pl.col("approved"))
        .mode()
        .sort()
        .first()
        .alias("disallowed_entry_mode_value"),
        pl.col("hours_start_min").first().alias("hours_start_min"),
        pl.col("hours_end_min").first().alias("hours_end_min"),
    ]


def _in_memory(lf: pl.LazyFrame) -> pl.LazyFrame:
    """``lf`` computed once (polars' in-memory engine) and handed on lazy."""
    return lf.collect(engine="in-memory").lazy()


def _agg_terminal_days(lf: pl.LazyFrame, *aggs: pl.Expr) -> pl.LazyFrame:
    """``lf.group_by("terminal_id", "local_date").agg(*aggs)``, on an integer run id if it can.

    Rows sorted by terminal and time have each (terminal, day) as one run of rows
    (unless a terminal's days interleave, e.g. rows without a time sorted first):
    grouping by the run id (a sorted integer) instead of the two string keys halves
    the CPU of the ~120 aggregations (issue 4). The run id is used only when it
    numbers exactly the distinct (terminal, day) pairs; otherwise the string keys
    are. The aggregates are the same either way (rows keep their order within a
    group); the output rows come in run order instead of an arbitrary order.
    """
    df = lf.collect(engine="in-memory")
    key = pl.struct("terminal_id", "local_date")
    run = df.select(key.rle_id().alias("_tg_td")).to_series()
    if df.height == 0 or int(run.max()) + 1 != df.select(key.n_unique()).item():
        return df.lazy().group_by("terminal_id", "local_date").agg(*aggs)
    return (
        df.with_columns(run.set_sorted())
        .lazy()
        .group_by("_tg_td", maintain_order=True)
        .agg(pl.col("terminal_id").first(), pl.col("local_date").first(), *aggs)
        .drop("_tg_td")
    )


def terminal_day(enriched: pl.LazyFrame, config: dict[str, Any]) -> pl.LazyFrame:
    """One row per (terminal_id, local_date): attributes, aggregates, details and evidence.

    Parameters
    ----------
    enriched : LazyFrame
        :func:`features.transactions.enrich_transactions` output, rows sorted by
        (terminal_id, txn_time, txn_id) as it returns them (daily caps are
        cumulative in that order).
    config : dict
        Thresholds (``card_testing`` and ``decline_families`` are used here).
    """
    # Each step below reads its input twice (narrow rows to sort, wide rows to join
    # back), so chained lazily the earlier steps were recomputed for every later one
    # (the plan scanned the input 18 times): each step's rows are materialised
    # instead (issue 4; the columns are shared, not copied).
    lf = _in_memory(card_testing_windows(enriched, config["card_testing"]))
    # Both forms of domain §1 #7's "sequential PANs" (constant step, incrementing
    # in order of use) are one signal: ``sequential_card`` / ``n_sequential_cards``.
    lf = _in_memory(
        card_runs(lf, config["card_testing"]).with_columns(
            (pl.col("sequential_card") | pl.col("incrementing_card")).alias("sequential_card")
        )
    )
    # The joins above keep the row order of ``enriched``, which
    # enrich_transactions sorts by (terminal_id, txn_time, txn_id): cumulative
    # caps need that time order, so no second sort of the wide rows is needed.
    # daily_cap_breaches, then round_splits, with one sort of the card sales.
    lf = _in_memory(
        cap_breaches_and_round_splits(
            lf,
            int(config["cash_out"]["same_card_window_s"]),
            int(config["general"]["round_amount_minor"]),
        )
    )
    technical = list(config["decline_families"]["technical"])
    lf = lf.with_columns(evidence_flags(technical))
    attrs = [
        pl.col("reg_merchant_id").first().alias("merchant_id"),
        pl.col("reg_registered_mcc").first().alias("registered_mcc"),
        pl.col("reg_region_code").first().alias("region_code"),
        pl.col("reg_terminal_kind").first().alias("terminal_kind"),
        pl.col("policy_key").first().alias("policy_key"),
    ]
    evidence = [
        pl.col("txn_id").filter(pl.col(f"ev_{b}")).head(MAX_EVIDENCE).alias(f"ev_{b}")
        for b in EVIDENCE_BEHAVIOURS
    ]
    details = [e for e in _detail_expressions() if e.meta.output_name() != "registered_mcc"]
    return _agg_terminal_days(
        lf,
        *attrs,
        *aggregate_expressions(),
        *device_expressions(),
        technical_incidents(int(config["malfunction"]["incident_gap_s"])),
        # Not stored in terminal_day either: split sales summing to a round figure.
        _count("round_split_start").alias("n_round_splits"),
        *details,
        *evidence,
    )
