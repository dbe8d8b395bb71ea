"""Magstripe fallback abuse: chip cards read by swipe or keyed (DE22 80x fallback, 01x manual, 02x/90x stripe reads of a chip card).

Thresholds: ``[fallback_abuse]`` in ``models/thresholds.toml`` (fallback share of chip-card transactions > 2% with at least 3 transactions, per day and over 7 days). Domain: ``shared/reference/domain.md`` section 1 rows 8 and 9 (downgrade transactions must be prohibited [S3]; chip service codes 2xx/6xx [S19]; the share is a heuristic [H]).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from models.rules.common import Check, _f, _pct, count_score, exceed_score


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


#: Daily counts the fallback rule sums over ``[fallback_abuse] window_days``.
FALLBACK_WINDOW_COUNTS: tuple[str, ...] = ("n_fallback",)
