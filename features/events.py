"""Per terminal-day signals from terminal-management telemetry (``terminal_events``).

Telemetry is optional (contract): a terminal without events simply has none of these
signals. Two families, both from domain.md §1 #1 / #2 and §3.1 (the terminal-info
object: serial, location, IP, MCC/MNC/LAC/CellID "are the inputs for the relocation
and clone rules"):

* devices: the serials that signed on or sent heartbeats under the terminal id, and
  how often they alternate (two devices answering to one terminal id at once);
* location: where located events put the terminal, and whether its network
  attachment (cell location area and IP network) moved away from the one it used
  before;
* health: how often the device rebooted (``reboot`` events), a malfunction symptom.

All functions are polars expression builders / lazy frames; the caller reads the rows.
"""

from __future__ import annotations

import polars as pl

from features.geo import haversine_km
from features.schema import MAX_EVIDENCE

#: Event types that report the terminal's own network attachment (cell, IP).
NETWORK_EVENT_TYPES: tuple[str, ...] = ("sign_on", "heartbeat", "location")

#: Telemetry columns joined onto the terminal-day frame, with their value when a
#: terminal sent no telemetry that day.
TELEMETRY_COUNTS: dict[str, int] = {
    "n_event_serials": 0,
    "n_event_serial_back_switch": 0,
    "n_event_located": 0,
    "n_event_outside_geofence": 0,
    "n_network_moved": 0,
    "n_reboot": 0,
}


def cell_lac() -> pl.Expr:
    """Location area code (third field of ``MCC-MNC-LAC-CI``) of ``cell_id``, with MCC-MNC."""
    parts = pl.col("cell_id").str.split("-")
    return (
        pl.when(parts.list.len() == 4)
        .then(
            pl.concat_str(parts.list.get(0), parts.list.get(1), parts.list.get(2), separator="-")
        )
        .alias("cell_lac")
    )


def ip_network() -> pl.Expr:
    """The /16 network of an IPv4 ``ip_address`` (``a.b``): a carrier's DHCP pool keeps it."""
    parts = pl.col("ip_address").str.split(".")
    return (
        pl.when(parts.list.len() == 4)
        .then(pl.concat_str(parts.list.get(0), parts.list.get(1), separator="."))
        .alias("ip_network")
    )


def serial_runs(events: pl.LazyFrame) -> pl.LazyFrame:
    """Runs of one device serial in time order, per terminal, with ``back_switch``.

    ``events``: rows sorted by (terminal_id, event_time). A run's ``back_switch`` is
    true when its serial is the serial of the run before the previous one (A .. B .. A):
    two devices alternating, not a one-off replacement (A .. B).
    """
    ev = events.filter(pl.col("device_serial").is_not_null()).with_columns(
        pl.col("device_serial").rle_id().over("terminal_id").alias("_run")
    )
    runs = ev.group_by("terminal_id", "_run", maintain_order=True).agg(
        pl.col("device_serial").first(), pl.col("event_id").first()
    )
    before = pl.col("device_serial").shift(2).over("terminal_id", order_by="_run")
    return runs.with_columns(
        (pl.col("device_serial") == before).fill_null(False).alias("back_switch")
    )


def event_day_features(
    events: pl.LazyFrame, registry: pl.LazyFrame, baseline: pl.LazyFrame | None = None
) -> pl.LazyFrame:
    """One row per terminal with telemetry that day.

    Parameters
    ----------
    events : LazyFrame
        The day's ``terminal_events`` rows (``event_id, terminal_id, event_time,
        event_type, device_serial, lat, lon, cell_id, ip_address``).
    registry : LazyFrame
        ``terminals`` rows; the latest version per terminal gives the registered
        address.
    baseline : LazyFrame or None
        :func:`network_baseline` of the days before (``terminal_id, base_lac,
        base_ip_network, base_days``); ``None``: no network-move signal.

    Returns
    -------
    LazyFrame
        ``terminal_id``, ``n_event_serials``, ``n_event_serial_back_switch``,
        ``n_event_located``, ``event_distance_p50_km``, ``event_lac``,
        ``event_ip_network``, ``base_lac``, ``base_ip_network``, ``base_days``,
        ``n_reboot`` (``reboot`` events), and the private lists :func:`with_telemetry`
        consumes (``_event_dist_km`` and the event ids ``_ev_dev``, ``_ev_loc``,
        ``_ev_net``, ``_ev_reboot``).
    """
    reg = (
        registry.sort("terminal_id", "updated_at")
        .group_by("terminal_id")
        .last()
        .select("terminal_id", "registered_lat", "registered_lon")
    )
    ev = events.sort("terminal_id", "event_time", "event_id").with_columns(
        cell_lac(), ip_network()
    )
    serials = (
        serial_runs(ev)
        .group_by("terminal_id")
        .agg(
            pl.col("device_serial").n_unique().cast(pl.Int64).alias("n_event_serials"),
            pl.col("back_switch").sum().cast(pl.Int64).alias("n_event_serial_back_switch"),
            pl.col("event_id").filter(pl.col("back_switch")).alias("_ev_dev"),
        )
    )
    located = ev.filter(pl.col("lat").is_not_null() & pl.col("lon").is_not_null()).join(
        reg, on="terminal_id", how="left"
    )
    dist = haversine_km(
        pl.col("registered_lat"), pl.col("registered_lon"), pl.col("lat"), pl.col("lon")
    )
    places = located.group_by("terminal_id").agg(
        pl.len().cast(pl.Int64).alias("n_event_located"),
        dist.median().alias("event_distance_p50_km"),
        dist.alias("_event_dist_km"),
        pl.col("event_id").alias("_ev_loc"),
    )
    net = (
        ev.filter(pl.col("event_type").is_in(NETWORK_EVENT_TYPES))
        .group_by("terminal_id")
        .agg(
            pl.col("cell_lac").drop_nulls().mode().sort().first().alias("event_lac"),
            pl.col("ip_network").drop_nulls().mode().sort().first().alias("event_ip_network"),
            pl.col("event_id").alias("_ev_net"),
        )
    )
    reboot = pl.col("event_type") == "reboot"
    health = ev.group_by("terminal_id").agg(
        reboot.sum().cast(pl.Int64).alias("n_reboot"),
        pl.col("event_id").filter(reboot).alias("_ev_reboot"),
    )
    terminals = ev.select("terminal_id").unique()
    out = (
        terminals.join(serials, on="terminal_id", how="left")
        .join(places, on="terminal_id", how="left")
        .join(net, on="terminal_id", how="left")
        .join(health, on="terminal_id", how="left")
    )
    if baseline is None:
        baseline = pl.LazyFrame(
            schema={
                "terminal_id": pl.String,
                "base_lac": pl.String,
                "base_ip_network": pl.String,
                "base_days": pl.Int64,
            }
        )
    return out.join(baseline, on="terminal_id", how="left")


def network_baseline(counts: pl.LazyFrame) -> pl.LazyFrame:
    """The usual network attachment per terminal: most frequent daily LAC and IP network.

    ``counts``: earlier days' network telemetry as ``terminal_id, event_date, cell_id,
    ip_address, n`` (``n`` events with that cell and address that day, e.g. a
    ``GROUP BY`` of ``terminal_events`` rows of :data:`NETWORK_EVENT_TYPES`). Each day
    votes once with its most frequent location area and IP network (ties: the smaller
    value); the baseline is the most voted (same tie rule); ``base_days`` counts the
    days with telemetry.
    """
    lf = counts.with_columns(cell_lac(), ip_network())

    def daily_vote(col: str) -> pl.LazyFrame:
        return (
            lf.filter(pl.col(col).is_not_null())
            .group_by("terminal_id", "event_date", col)
            .agg(pl.col("n").sum())
            .sort("terminal_id", "event_date", "n", col, descending=[False, False, True, False])
            .group_by("terminal_id", "event_date")
            .agg(pl.col(col).first())
        )

    def usual(col: str, name: str) -> pl.LazyFrame:
        return (
            daily_vote(col)
            .group_by("terminal_id", col)
            .agg(pl.len().alias("votes"))
            .sort("terminal_id", "votes", col, descending=[False, True, False])
            .group_by("terminal_id")
            .agg(pl.col(col).first().alias(name))
        )

    days = lf.group_by("terminal_id").agg(
        pl.col("event_date").n_unique().cast(pl.Int64).alias("base_days")
    )
    return days.join(usual("cell_lac", "base_lac"), on="terminal_id", how="left").join(
        usual("ip_network", "base_ip_network"), on="terminal_id", how="left"
    )


def with_telemetry(
    day: pl.DataFrame, telemetry: pl.DataFrame | None, config: dict
) -> pl.DataFrame:
    """Join :func:`event_day_features` onto the terminal-day frame and judge it.

    Adds :data:`TELEMETRY_COUNTS` (0 without telemetry): ``n_event_outside_geofence``
    counts located events farther than the terminal's geofence (``geofence_m``) from
    the registered address; ``n_network_moved`` is 1 on a day whose usual location area
    (cell LAC) and IP network both differ from the terminal's baseline of at least
    ``[relocation] network_min_baseline_days`` days, for a terminal whose geofence is at
    most ``network_max_geofence_m`` (a fixed-site terminal stays in one location
    area). Event ids showing it are appended to ``ev_relocation`` / ``ev_cloned_terminal``
    (reboot events to ``ev_malfunction``).
    Only terminals with transactions that day are judged (``day`` has one row each).
    """
    c = config["relocation"]
    if telemetry is None or telemetry.height == 0:
        return day.with_columns(
            [pl.lit(v, dtype=pl.Int64).alias(k) for k, v in TELEMETRY_COUNTS.items()]
        ).with_columns(
            pl.lit(None, dtype=pl.Float64).alias("event_distance_p50_km"),
            pl.lit(None, dtype=pl.String).alias("event_lac"),
            pl.lit(None, dtype=pl.String).alias("event_ip_network"),
            pl.lit(None, dtype=pl.String).alias("base_lac"),
            pl.lit(None, dtype=pl.String).alias("base_ip_network"),
            pl.lit(None, dtype=pl.Int64).alias("base_days"),
        )
    outside = (
        day.select("terminal_id", "geofence_m")
        .join(telemetry.select("terminal_id", "_event_dist_km", "_ev_loc"), on="terminal_id")
        .explode("_event_dist_km", "_ev_loc")
        .filter(pl.col("_event_dist_km") * 1000.0 > pl.col("geofence_m"))
        .group_by("terminal_id")
        .agg(
            pl.len().cast(pl.Int64).alias("n_event_outside_geofence"),
            pl.col("_ev_loc").alias("_ev_out"),
        )
    )
    out = day.join(telemetry, on="terminal_id", how="left").join(
        outside, on="terminal_id", how="left"
    )
    moved = (
        (pl.col("geofence_m") <= float(c["network_max_geofence_m"]))
        & (pl.col("base_days") >= int(c["network_min_baseline_days"]))
        & (pl.col("event_lac") != pl.col("base_lac"))
        & (pl.col("event_ip_network") != pl.col("base_ip_network"))
    ).fill_null(False)
    empty = pl.lit([], dtype=pl.List(pl.String))
    ev_moved = pl.when(moved).then(pl.col("_ev_net")).otherwise(empty).fill_null(empty)
    return out.with_columns(
        *[pl.col(k).fill_null(v) for k, v in TELEMETRY_COUNTS.items() if k != "n_network_moved"],
        moved.cast(pl.Int64).alias("n_network_moved"),
        pl.concat_list("ev_relocation", pl.col("_ev_out").fill_null(empty), ev_moved)
        .list.head(MAX_EVIDENCE)
        .alias("ev_relocation"),
        pl.concat_list("ev_cloned_terminal", pl.col("_ev_dev").fill_null(empty))
        .list.head(MAX_EVIDENCE)
        .alias("ev_cloned_terminal"),
        pl.concat_list("ev_malfunction", pl.col("_ev_reboot").fill_null(empty))
        .list.head(MAX_EVIDENCE)
        .alias("ev_malfunction"),
    ).drop("_event_dist_km", "_ev_loc", "_ev_net", "_ev_dev", "_ev_out", "_ev_reboot")
