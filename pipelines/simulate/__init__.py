"""The trial simulator: realistic trial logs with ground truth (``trialguard simulate``).

Public API (imported lazily, so ``trialguard --help`` stays quick):

- :func:`simulate_trial` ``(n_terminals, days, start, seed, *, min_per_behaviour=1,
  injected_share=...) -> Trial``: a trial in memory, for tests and notebooks.
- :func:`write_trial` ``(out_dir, n_terminals, days, start, seed, *, fmt="csv", ...)
  -> WriteReport``: streams the trial to ``out_dir/landing`` day by day and writes
  ``out_dir/truth.csv``.

The injection parameters live in :mod:`pipelines.simulate.scenarios`; detection
code must never import this package. See ``docs/simulator.md``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from typing import Any

__all__ = ["Trial", "WriteReport", "add_arguments", "main", "simulate_trial", "write_trial"]
_LAZY = {"Trial", "WriteReport", "simulate_trial", "write_trial", "policies_toml"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from pipelines.simulate import trial

        return getattr(trial, name)
    raise AttributeError(f"module 'pipelines.simulate' has no attribute {name!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trialguard simulate``."""
    parser.add_argument("--terminals", type=int, required=True, help="registered trial terminals")
    parser.add_argument("--days", type=int, required=True, help="local days of transactions")
    parser.add_argument(
        "--start",
        type=date.fromisoformat,
        default=date(2025, 9, 1),
        help="first day (default 2025-09-01)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (same seed, same bytes)")
    parser.add_argument(
        "--out",
        default="data/simulated",
        help="output folder: inputs go to OUT/landing, the truth to OUT/truth.csv (default data/simulated)",
    )
    parser.add_argument(
        "--format",
        choices=("csv", "parquet"),
        default="csv",
        dest="fmt",
        help="file format (default csv)",
    )
    parser.add_argument(
        "--min-per-behaviour",
        type=int,
        default=1,
        help="at least this many terminals per injected behaviour",
    )


def main(args: argparse.Namespace, settings: object) -> int:
    """Run ``trialguard simulate``; the settings are not needed (no database)."""
    from pipelines.progress import print_summary, steps
    from pipelines.simulate.trial import write_trial

    if args.terminals < 1 or args.days < 1:
        print(
            f"error: --terminals and --days must be at least 1, got {args.terminals} and "
            f"{args.days}; e.g. --terminals 2000 --days 30",
            file=sys.stderr,
        )
        return 2
    with steps("simulate", total=args.days) as bar:
        report = write_trial(
            args.out,
            args.terminals,
            args.days,
            args.start,
            args.seed,
            fmt=args.fmt,
            min_per_behaviour=args.min_per_behaviour,
            on_day=lambda day, n: bar.advance(f"{day}: {n:,} transactions"),
        )
    c = report.counts
    print_summary(
        "simulate",
        {
            "terminals (registry rows)": f"{args.terminals:,} ({c['terminals']:,})",
            "transactions": c["transactions"],
            "terminal events": c["terminal_events"],
            "fraud reports": c["fraud_reports"],
            "truth episodes": c["truth_episodes"],
            "landing (ingest this)": str(report.landing),
            "truth": str(report.out_dir / "truth.csv"),
        },
    )
    return 0
