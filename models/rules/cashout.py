"""Credit-card cash-out (套现): round amounts, amounts just under the cap, same-card bursts and split sales summing to round figures, repeat cards, night trading, credit share, unmatched refunds.

Thresholds: ``[cash_out]`` in ``models/thresholds.toml`` (at least 2 indicators; round share > 50%, credit share > 90%, >= 3 same-card sales within 600 s, same card > 3 times a day, within 1% below the cap, night share > 20%, refund ratio > 5%). Domain: ``shared/reference/domain.md`` section 1 rows 5, 10 and 12 (definition [S2]; split swipes prohibited [S4]; folk thresholds [S9][S10][S11]; the rest heuristics [H]).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from models.rules.common import Check, _f, _night_business, _pct, _yuan, count_score, exceed_score


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
