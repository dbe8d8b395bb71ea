"""Peer groups (registered MCC x region x terminal kind) and peer-relative features.

A terminal in its first days has almost no history of its own, so it is judged
against its peers: terminals of the same registered MCC, region and kind on the
same day. Groups with fewer than ``min_peers`` terminals back off to MCC x kind,
then kind, then everyone. For each feature of :data:`PEER_FEATURES` we give the
robust z-score against the group (``(x - median) / (1.4826 MAD)``, with a floor
on the scale so a group where everyone is 0 does not make every 1 infinite) and
the percentile within the group. Heavy-tailed counts and amounts are compared
on a ``log1p`` scale.
"""

from __future__ import annotations

import polars as pl

#: feature -> (log scale?, floor of the scale on the compared scale)
PEER_FEATURES: dict[str, tuple[bool, float]] = {
    "n_txn": (True, 0.25),
    "cap_amount": (True, 0.25),
    "amount_mean": (True, 0.25),
    "amount_p90": (True, 0.25),
    "n_cards": (True, 0.25),
    "max_same_card": (True, 0.25),
    "round_share": (False, 0.05),
    "just_under_cap_share": (False, 0.02),
    "credit_share": (False, 0.1),
    "night_share": (False, 0.02),
    "outside_hours_share": (False, 0.02),
    "top5_card_share": (False, 0.05),
    "decline_rate": (False, 0.03),
    "decline_card_rate": (False, 0.02),
    "decline_technical_rate": (False, 0.02),
    "refund_ratio": (False, 0.02),
    "reversal_ratio": (False, 0.02),
    "fallback_share": (False, 0.02),
    "mcc_mismatch_share": (False, 0.02),
    "distance_p50_km": (True, 0.1),
    "max_speed_kmh": (True, 0.5),
    "n_serials": (False, 0.5),
    "n_ips": (False, 0.5),
    "n_stan_conflict": (True, 0.25),
    "max_cards_window": (True, 0.25),
    "n_txn_vs_7d": (False, 0.25),
    "cap_amount_vs_7d": (False, 0.25),
}

PEER_LEVELS: tuple[tuple[str, ...], ...] = (
    ("registered_mcc", "region_code", "terminal_kind"),
    ("registered_mcc", "terminal_kind"),
    ("terminal_kind",),
    (),
)


def peer_group(min_peers: int) -> pl.Expr:
    """The finest peer-group key with at least ``min_peers`` terminals that day."""
    expr: pl.Expr = pl.lit("all")
    for level in reversed(PEER_LEVELS[:-1]):
        key = pl.concat_str([pl.col(c).fill_null("?") for c in level], separator="/")
        size = pl.len().over(["local_date", *level])
        expr = pl.when(size >= min_peers).then(key).otherwise(expr)
    return expr.alias("peer_group")


def _compared(name: str) -> pl.Expr:
    log, _ = PEER_FEATURES[name]
    x = pl.col(name).cast(pl.Float64).fill_nan(0.0).fill_null(0.0).clip(-1e12, 1e12)
    return x.clip(lower_bound=0.0).log1p() if log else x


def peer_z(name: str) -> pl.Expr:
    """Robust z-score of ``name`` against its peer group (column ``z_<name>``)."""
    _, floor = PEER_FEATURES[name]
    x = _compared(name)
    keys = ["local_date", "peer_group"]
    med = x.median().over(keys)
    mad = (x - med).abs().median().over(keys)
    scale = pl.max_horizontal(1.4826 * mad, pl.lit(floor))
    return ((x - med) / scale).alias(f"z_{name}")


def peer_pct(name: str) -> pl.Expr:
    """Percentile (0-100) of ``name`` within its peer group (column ``pct_<name>``)."""
    keys = ["local_date", "peer_group"]
    x = _compared(name)
    return (100.0 * x.rank("max").over(keys) / pl.len().over(keys)).alias(f"pct_{name}")


def with_peer_features(day: pl.LazyFrame, min_peers: int) -> pl.LazyFrame:
    """``day`` plus ``peer_group``, ``peer_size`` and ``z_*`` / ``pct_*`` for every peer feature."""
    names = day.collect_schema().names()
    missing = [pl.lit(0.0).alias(n) for n in PEER_FEATURES if n not in names]
    lf = day.with_columns(missing) if missing else day
    lf = lf.with_columns(peer_group(min_peers))
    lf = lf.with_columns(pl.len().over(["local_date", "peer_group"]).alias("peer_size"))
    return lf.with_columns(
        *[peer_z(n) for n in PEER_FEATURES], *[peer_pct(n) for n in PEER_FEATURES]
    )
