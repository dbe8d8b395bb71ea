"""The terminal's identity: cloned terminals (one TID on two devices: serials, IPs and cells interleaving, STAN repeats, conflicts and parallel chains) and MCC jumping (跳码: DE18 against the registered MCC and the MCC inside the 15-digit MID).

Thresholds: ``[cloned_terminal]`` (2 serials, a back-switch, STAN conflicts) and ``[mcc_mismatch]`` in ``models/thresholds.toml``. Domain: ``shared/reference/domain.md`` section 1 rows 2 and 3 (UnionPay terminal-info reporting [S16][S17]; CUP MID layout [S18]; counts are heuristics [H]).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from models.rules.common import Check, _f, count_score, exceed_score


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
