"""Per-transaction features: registry version in force, policy, and one flag per signal.

Everything here is a polars expression builder named after the column it
produces, composed by :func:`enrich_transactions` in a few ``with_columns``
stages. Input frames are lazy; :func:`enrich_transactions` collects once, to
hand the sorted rows to the numba kernels (:func:`with_sequence_kernels`).

Expected input: transaction rows of the stored ``transactions`` table, sorted
or not, optionally with ``orig_terminal_id``, ``orig_card_token`` and
``orig_amount_minor`` (the referenced original of a refund, looked up by the
caller; absent means "not looked up", which counts as not found).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from features.geo import haversine_km
from features.schema import APPROVED_RESPONSE_CODE, CAP_TXN_TYPES, TERMINAL_KINDS
from features.sequences import (
    cell_back_switch,
    impossible_hop,
    ip_back_switch,
    mcc_switch,
    serial_back_switch,
    stan_conflict,
    stan_out_of_order,
    with_hops,
    with_sequence_kernels,
    with_stan_chains,
)

#: Registry attributes that fall back to the terminal's earliest row when no row is
#: in force yet (location, MCC, kind, policy, serial).
REGISTRY_ATTRIBUTES: tuple[str, ...] = (
    "merchant_id",
    "serial_number",
    "registered_mcc",
    "registered_lat",
    "registered_lon",
    "region_code",
    "terminal_kind",
    "policy_id",
)


#: Registry columns carried onto each transaction (prefixed ``reg_`` when clashing).
REGISTRY_COLUMNS: tuple[str, ...] = (
    *REGISTRY_ATTRIBUTES,
    "activated_at",
    "trial_start",
    "trial_end",
    "status",
    "updated_at",
)


def registry_in_force(txns: pl.LazyFrame, registry: pl.LazyFrame) -> pl.LazyFrame:
    """Attach the registry row in force at each transaction's time (row order kept).

    The row in force is the latest ``updated_at`` <= ``txn_time`` (contract).
    ``reg_known`` says whether the terminal id appears in the registry at all,
    ``reg_in_force`` whether a row was in force at that time. Attributes
    (location, MCC, kind, policy, serial) fall back to the terminal's earliest
    row when none is in force yet, so location and MCC checks still work.

    ``txns`` must be sorted by ``(terminal_id, txn_time)`` (as
    :func:`enrich_transactions` sorts them): the as-of join then needs no sort
    of the transaction rows. Every registry row (attributes already falling back
    to the earliest row) plus one "nothing in force yet" row per terminal (at
    the smallest time) form a small candidate table; one as-of join picks the
    candidate of each transaction.
    """
    static = REGISTRY_ATTRIBUTES
    time_type = txns.collect_schema()["txn_time"]
    reg = registry.select(
        "terminal_id",
        *[pl.col(c).alias(f"reg_{c}") for c in REGISTRY_COLUMNS],
    )
    first = (
        reg.sort("terminal_id", "reg_updated_at")
        .group_by("terminal_id")
        .first()
        .select("terminal_id", *[pl.col(f"reg_{c}").alias(f"first_{c}") for c in REGISTRY_COLUMNS])
    )
    # Smaller than any time: before a terminal's first row (or without a time)
    # the "nothing in force" candidate is found.
    lowest = pl.lit(-(2**63), dtype=pl.Int64)
    in_force = (
        reg.filter(pl.col("reg_updated_at").is_not_null())
        .join(first, on="terminal_id", how="inner")
        .with_columns(
            pl.col("reg_updated_at").cast(time_type).cast(pl.Int64).alias("_asof_t"),
            pl.lit(True).alias("reg_in_force"),
            *[pl.coalesce(f"reg_{c}", f"first_{c}").alias(f"reg_{c}") for c in static],
        )
    )
    never = pl.lit(False)
    none_yet = first.with_columns(
        lowest.alias("_asof_t"),
        never.alias("reg_in_force"),
        *[
            (
                pl.col(f"first_{c}") if c in static else pl.when(never).then(pl.col(f"first_{c}"))
            ).alias(f"reg_{c}")
            for c in REGISTRY_COLUMNS
        ],
    )
    cols = [
        "terminal_id",
        "_asof_t",
        *[f"reg_{c}" for c in REGISTRY_COLUMNS],
        "reg_in_force",
        pl.col("first_updated_at").is_not_null().alias("_known"),
    ]
    candidates = pl.concat([in_force.select(cols), none_yet.select(cols)]).sort(
        "terminal_id", "_asof_t"
    )
    t = pl.col("txn_time").cast(pl.Int64).fill_null(lowest)
    joined = txns.with_columns(t.alias("_asof_t")).join_asof(
        candidates,
        on="_asof_t",
        by="terminal_id",
        strategy="backward",
        check_sortedness=False,
    )
    names = txns.collect_schema().names()
    return joined.select(
        *names,
        *[f"reg_{c}" for c in REGISTRY_COLUMNS],
        pl.col("_known").fill_null(False).alias("reg_known"),
        pl.col("reg_in_force").fill_null(False),
    )


def join_policy(txns: pl.LazyFrame, policies: pl.DataFrame) -> pl.LazyFrame:
    """Attach the policy of each transaction (unknown policy or terminal -> ``default``)."""
    known = policies.get_column("policy_key").to_list()
    with_key = txns.with_columns(
        pl.when(pl.col("reg_policy_id").is_in(known))
        .then(pl.col("reg_policy_id"))
        .otherwise(pl.lit("default"))
        .alias("policy_key")
    )
    lists = ["allowed_card_types", "allowed_txn_types", "allowed_entry_modes"]
    # Policies are few: each policy column is gathered by the policy's row number
    # instead of joining (and copying) the wide transaction rows.
    row = pl.col("policy_key").replace_strict(
        known, list(range(len(known))), default=None, return_dtype=pl.UInt32
    )
    out = with_key.with_columns(
        pl.lit(policies.get_column(c)).gather(row).alias(c)
        for c in policies.columns
        if c != "policy_key" and c not in lists
    )
    geofence = pl.lit(None, dtype=pl.Float64)
    for kind in TERMINAL_KINDS:
        geofence = (
            pl.when(pl.col("reg_terminal_kind") == kind)
            .then(pl.col(f"geofence_m_{kind}"))
            .otherwise(geofence)
        )
    return out.with_columns(geofence.alias("geofence_m")).drop(
        [f"geofence_m_{k}" for k in TERMINAL_KINDS]
    )


def approved() -> pl.Expr:
    """The switch approved the message (DE39 ``00``)."""
    return (pl.col("response_code") == APPROVED_RESPONSE_CODE).alias("approved")


def cap_txn() -> pl.Expr:
    """Approved row that counts towards trial caps (purchase, preauth_complete, cash_advance)."""
    return (
        (pl.col("response_code") == APPROVED_RESPONSE_CODE)
        & pl.col("txn_type").is_in(list(CAP_TXN_TYPES))
    ).alias("cap_txn")


def minute_of_day() -> pl.Expr:
    """Local minute of the day of ``txn_time`` (0..1439)."""
    t = pl.col("txn_time")
    return (t.dt.hour().cast(pl.Int64) * 60 + t.dt.minute().cast(pl.Int64)).alias("minute_of_day")


def outside_hours() -> pl.Expr:
    """Outside the policy's business hours (start inclusive, end exclusive, may cross midnight)."""
    m, s, e = pl.col("minute_of_day"), pl.col("hours_start_min"), pl.col("hours_end_min")
    inside = pl.when(s < e).then((m >= s) & (m < e)).otherwise((m >= s) | (m < e))
    return (s.is_not_null() & e.is_not_null() & ~inside).fill_null(False).alias("outside_hours")


def night(start_hour: int, end_hour: int) -> pl.Expr:
    """In the night window ``[start_hour, end_hour)`` local time."""
    h = pl.col("txn_time").dt.hour()
    return ((h >= start_hour) & (h < end_hour)).alias("night")


def round_amount(round_minor: int) -> pl.Expr:
    """Approved amount that is a whole multiple of ``round_minor`` (e.g. 100 yuan)."""
    return ((pl.col("amount_minor") > 0) & (pl.col("amount_minor") % round_minor == 0)).alias(
        "round_amount"
    )


def just_under_cap(pct: float) -> pl.Expr:
    """Cap-counting amount within ``pct`` below the per-transaction cap."""
    cap = pl.col("max_txn_amount_minor")
    a = pl.col("amount_minor")
    return (
        (pl.col("cap_txn") & (a <= cap) & (a >= cap * (1.0 - pct)))
        .fill_null(False)
        .alias("just_under_cap")
    )


def over_txn_cap() -> pl.Expr:
    """Cap-counting amount above the per-transaction cap."""
    return (
        (pl.col("cap_txn") & (pl.col("amount_minor") > pl.col("max_txn_amount_minor")))
        .fill_null(False)
        .alias("over_txn_cap")
    )


def credit_card() -> pl.Expr:
    """Credit card."""
    return (pl.col("card_type") == "credit").alias("credit_card")


def _not_allowed(value_col: str, list_col: str, policies: pl.DataFrame, name: str) -> pl.Expr:
    """``value_col`` is not in the policy's ``list_col`` (absent list = all allowed).

    Built as one ``is_in`` per policy (policies are few), so no list is carried
    on every transaction row.
    """
    expr = pl.lit(False)
    for key, allowed in zip(
        policies.get_column("policy_key"), policies.get_column(list_col), strict=True
    ):
        if allowed is None:
            continue
        expr = (
            pl.when(pl.col("policy_key") == key)
            .then(~pl.col(value_col).is_in(list(allowed)))
            .otherwise(expr)
        )
    return expr.fill_null(False).alias(name)


def disallowed_card_type(policies: pl.DataFrame) -> pl.Expr:
    """Card type the policy does not allow (absent list = all allowed)."""
    return _not_allowed("card_type", "allowed_card_types", policies, "disallowed_card_type")


def disallowed_txn_type(policies: pl.DataFrame) -> pl.Expr:
    """Transaction type the policy does not allow."""
    return _not_allowed("txn_type", "allowed_txn_types", policies, "disallowed_txn_type")


def disallowed_entry_mode(policies: pl.DataFrame) -> pl.Expr:
    """Entry mode the policy does not allow."""
    return _not_allowed("entry_mode", "allowed_entry_modes", policies, "disallowed_entry_mode")


def fallback_entry(
    entry_modes: list[str],
    stripe_modes: list[str] | tuple[str, ...] = (),
    chip_modes: list[str] | tuple[str, ...] = (),
) -> pl.Expr:
    """Fallback or manual read of a card: DE22 in ``entry_modes``, or a chip card swiped.

    Domain §1 #8: a chip card read by swipe (DE22 02x / 90x) is a fallback. The
    message carries no service code, so a swiped card (``stripe_modes``) counts as
    a chip card when the SAME terminal read it by chip (``chip_modes``) the same
    day: the terminal's reader handles that card's chip, so swiping it is a
    downgrade. A card chip-read only elsewhere is not counted: a counterfeit copy
    of its stripe swiped by a fraudster looks the same and is card fraud, not the
    terminal's practice. Earlier days are not looked up: that would scan the
    stored history every night (its cost would grow with the trial's length).
    """
    em = pl.col("entry_mode")
    out = em.is_in(list(entry_modes))
    if stripe_modes and chip_modes:
        card = pl.col("card_token")
        swiped = em.is_in(list(stripe_modes)) & card.is_not_null()
        # chip reads of a swiped card (few) first, then the exact (terminal, card, day)
        # match: a window over those three keys cost ~10x more on every row
        candidate = em.is_in(list(chip_modes)) & card.is_in(card.filter(swiped).implode())
        key = pl.struct("terminal_id", "card_token", "local_date")
        out = out | (swiped & key.is_in(key.filter(candidate).implode()))
    return out.fill_null(False).alias("fallback_entry")


def decline_family(families: dict[str, list[str]]) -> pl.Expr:
    """Decline family of a non-approved row: card, pin, funds, technical or other; null if approved."""
    rc = pl.col("response_code")
    expr = pl.when(rc == APPROVED_RESPONSE_CODE).then(pl.lit(None, dtype=pl.String))
    for family, codes in families.items():
        expr = expr.when(rc.is_in(list(codes))).then(pl.lit(family))
    return expr.otherwise(pl.lit("other")).alias("decline_family")


def distance_km() -> pl.Expr:
    """Distance of the reported location from the registered address, km."""
    return haversine_km(
        pl.col("terminal_lat"),
        pl.col("terminal_lon"),
        pl.col("reg_registered_lat"),
        pl.col("reg_registered_lon"),
    ).alias("distance_km")


def outside_geofence() -> pl.Expr:
    """Reported location farther from the registered address than the policy's geofence."""
    return (
        (pl.col("distance_km") * 1000.0 > pl.col("geofence_m"))
        .fill_null(False)
        .alias("outside_geofence")
    )


def mcc_mismatch(check_mid: bool = True) -> pl.Expr:
    """Message MCC differs from the registered MCC (or from the MCC digits of the MID)."""
    reg = pl.col("mcc") != pl.col("reg_registered_mcc")
    if check_mid:
        reg = reg | (pl.col("mcc") != pl.col("merchant_id").str.slice(7, 4))
    return reg.fill_null(False).alias("mcc_mismatch")


def serial_mismatch() -> pl.Expr:
    """Device serial reported in the message differs from the registered serial."""
    return (
        (pl.col("device_serial") != pl.col("reg_serial_number"))
        .fill_null(False)
        .alias("serial_mismatch")
    )


def unregistered_reason(as_of_end: pl.Expr | None = None) -> pl.Expr:
    """Why a transaction is unregistered use (null when it is not).

    Order of precedence: unknown terminal, no registry row yet, suspended or
    terminated, not activated, before trial start, after trial end.
    """
    t = pl.col("txn_time")
    d = pl.col("local_date")
    return (
        pl.when(~pl.col("reg_known"))
        .then(pl.lit("unknown_terminal"))
        .when(~pl.col("reg_in_force"))
        .then(pl.lit("before_registration"))
        .when(pl.col("reg_status").is_in(["suspended", "terminated"]))
        .then(pl.col("reg_status"))
        .when(pl.col("reg_activated_at").is_null() | (t < pl.col("reg_activated_at")))
        .then(pl.lit("before_activation"))
        .when(d < pl.col("reg_trial_start"))
        .then(pl.lit("before_trial"))
        .when(d > pl.col("reg_trial_end"))
        .then(pl.lit("after_trial"))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("unregistered_reason")
    )


def refund_unmatched() -> pl.Expr:
    """Refund with no matching purchase: no original, another terminal or card, or a larger amount."""
    is_refund = pl.col("txn_type") == "refund"
    matched = (
        (pl.col("orig_terminal_id") == pl.col("terminal_id"))
        & (pl.col("orig_card_token") == pl.col("card_token")).fill_null(True)
        & (pl.col("amount_minor") <= pl.col("orig_amount_minor"))
    ).fill_null(False)
    return (is_refund & ~matched).alias("refund_unmatched")


def enrich_transactions(
    txns: pl.LazyFrame,
    registry: pl.LazyFrame,
    policies: pl.DataFrame,
    config: dict[str, Any],
) -> pl.LazyFrame:
    """All per-transaction signals, rows sorted by (terminal_id, txn_time, txn_id).

    The plan is collected once after the row-local and ``shift`` stages, so that
    :func:`with_sequence_kernels` can run the numba kernels on the sorted rows;
    the result is returned lazy again.

    Parameters
    ----------
    txns : LazyFrame
        Stored ``transactions`` rows (one or more days, any terminals).
    registry : LazyFrame
        Stored ``terminals`` rows (every version) of those terminals.
    policies : DataFrame
        :func:`features.policy.policy_frame` output.
    config : dict
        :func:`models.config.load_config` output (thresholds).
    """
    g = config["general"]
    fb = config["fallback_abuse"]
    names = txns.collect_schema().names()
    extra = [
        pl.lit(None, dtype=dt).alias(c)
        for c, dt in (
            ("orig_terminal_id", pl.String),
            ("orig_card_token", pl.String),
            ("orig_amount_minor", pl.Int64),
        )
        if c not in names
    ]
    if extra:
        txns = txns.with_columns(extra)
    # Sort once, while the rows are narrow; the joins keep this order. A stable sort
    # (the same order: the key ends with txn_id): about half the CPU on rows already
    # grouped by terminal, the same on rows in time order, ~10 % more shuffled (issue 4).
    txns = txns.sort("terminal_id", "txn_time", "txn_id", maintain_order=True)
    lf = join_policy(registry_in_force(txns, registry), policies)
    lf = lf.with_columns(
        approved(),
        cap_txn(),
        minute_of_day(),
        night(int(g["night_start_hour"]), int(g["night_end_hour"])),
        round_amount(int(g["round_amount_minor"])),
        credit_card(),
        disallowed_card_type(policies),
        disallowed_txn_type(policies),
        disallowed_entry_mode(policies),
        fallback_entry(
            list(fb["entry_modes"]),
            list(fb.get("chip_card_stripe_modes", [])),
            list(fb.get("chip_modes", [])),
        ),
        decline_family(dict(config["decline_families"])),
        distance_km(),
        mcc_mismatch(bool(config["mcc_mismatch"].get("check_mid", True))),
        serial_mismatch(),
        unregistered_reason(),
        refund_unmatched(),
    )
    rel = config["relocation"]
    co = config["cash_out"]
    lf = lf.with_columns(
        outside_hours(),
        just_under_cap(float(co["just_under_cap_pct"])),
        over_txn_cap(),
        outside_geofence(),
        serial_back_switch(),
        ip_back_switch(),
        cell_back_switch(),
        mcc_switch(),
        stan_out_of_order(),
        stan_conflict(),
    )
    # Kernel-backed columns need the sorted rows in memory (one collect).
    # The in-memory engine: polars' default streaming engine runs these ordered
    # (shift / forward-fill / run-id) plans several times slower (issue 4).
    lf = with_hops(
        with_stan_chains(with_sequence_kernels(lf.collect(engine="in-memory"), config), config)
    ).lazy()
    return lf.with_columns(impossible_hop(float(rel["max_speed_kmh"]), float(rel["min_jump_km"])))
