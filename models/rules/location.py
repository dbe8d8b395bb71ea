"""Relocation (移机): reported positions outside the geofence around the registered address, impossible travel between fixes, network-location (cell / IP) moves.

Thresholds: the policy's ``geofence_m`` (fixed and smart POS 500 m, mobile POS 20 km by default) and ``[relocation]`` in ``models/thresholds.toml`` (at least 3 fixes and half of them outside; speed above 300 km/h over a jump of at least 20 km). Domain: ``shared/reference/domain.md`` section 1 row 1 (PBOC 2013 No. 9 names 移机 a risk event [S1]; acquirers monitor terminal location [S6]; distances and speed are heuristics [H]).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from models.rules.common import Check, _f, exceed_score


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
