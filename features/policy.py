"""Trial policies as a polars frame, one row per policy_id, ready to join on transactions.

Policy semantics (docs/data-contract.md "policies"): an absent key means no
limit of that kind; ``business_hours`` is ``[start, end]`` local time, start
inclusive, end exclusive, and may cross midnight; ``geofence_m`` is per
terminal kind; an unknown policy_id is judged under ``default``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from features.schema import DEFAULT_POLICY_ID, POLICY_KEYS, TERMINAL_KINDS

#: Columns of :func:`policy_frame`.
POLICY_FRAME_SCHEMA = pl.Schema(
    {
        "policy_key": pl.String(),
        "max_txn_amount_minor": pl.Int64(),
        "max_daily_amount_minor": pl.Int64(),
        "max_daily_txn_count": pl.Int64(),
        "max_same_card_per_day": pl.Int64(),
        "allowed_card_types": pl.List(pl.String()),
        "allowed_txn_types": pl.List(pl.String()),
        "allowed_entry_modes": pl.List(pl.String()),
        "hours_start_min": pl.Int64(),
        "hours_end_min": pl.Int64(),
        **{f"geofence_m_{kind}": pl.Float64() for kind in TERMINAL_KINDS},
    }
)


def _minutes(hhmm: str, policy_id: str) -> int:
    """``"07:30"`` -> 450, with a clear error for anything else."""
    try:
        hours, minutes = str(hhmm).split(":")
        value = int(hours) * 60 + int(minutes)
    except ValueError:
        value = -1
    if not 0 <= value <= 24 * 60:
        raise ValueError(
            f"policy {policy_id!r}: business_hours value {hhmm!r} is not a time; "
            "expected 'HH:MM' (e.g. ['07:00', '23:00'])"
        )
    return value


def policy_row(policy_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """One policy as a flat row of :data:`POLICY_FRAME_SCHEMA` (absent key -> null = no limit)."""
    unknown = sorted(set(body) - set(POLICY_KEYS))
    if unknown:
        raise ValueError(
            f"policy {policy_id!r} has unknown keys {unknown}; known keys are {sorted(POLICY_KEYS)}"
        )
    row: dict[str, Any] = {"policy_key": policy_id}
    for key in (
        "max_txn_amount_minor",
        "max_daily_amount_minor",
        "max_daily_txn_count",
        "max_same_card_per_day",
    ):
        row[key] = int(body[key]) if body.get(key) is not None else None
    for key in ("allowed_card_types", "allowed_txn_types", "allowed_entry_modes"):
        row[key] = [str(v) for v in body[key]] if body.get(key) is not None else None
    hours = body.get("business_hours")
    if hours is not None:
        if len(hours) != 2:
            raise ValueError(
                f"policy {policy_id!r}: business_hours is {hours!r}; expected [start, end]"
            )
        start, end = (_minutes(h, policy_id) for h in hours)
        # A window from a time to the same time is all day.
        row["hours_start_min"], row["hours_end_min"] = (
            (None, None) if start == end else (start, end)
        )
    else:
        row["hours_start_min"] = row["hours_end_min"] = None
    geofence = body.get("geofence_m") or {}
    for kind in TERMINAL_KINDS:
        value = geofence.get(kind)
        row[f"geofence_m_{kind}"] = float(value) if value is not None else None
    return row


def policy_frame(
    policies: Mapping[str, Mapping[str, Any]], default: Mapping[str, Any]
) -> pl.DataFrame:
    """Every policy as one row; ``default`` is used when no ``default`` policy is given.

    Parameters
    ----------
    policies : mapping
        policy_id -> policy body (the keys of the contract).
    default : mapping
        Body of the shipped ``default`` policy, used only if ``policies`` has none.
    """
    merged = dict(policies)
    merged.setdefault(DEFAULT_POLICY_ID, default)
    rows = [policy_row(pid, body) for pid, body in sorted(merged.items())]
    return pl.DataFrame(rows, schema=POLICY_FRAME_SCHEMA)
