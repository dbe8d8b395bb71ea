"""``trialguard bench simulate``: simulator throughput and memory.

Simulates about ``--rows`` transactions over ``--days`` days (terminals are sized
to reach the row count) and writes them like ``trialguard simulate``. Reports wall
and CPU seconds (all threads), rows per second, where the main thread's time went
(building the world, generating days, waiting for the writer thread, which writes
and judges day d while day d + 1 is generated), peak resident memory and the
largest day, since memory is bounded by a day's data (two in flight), not by the trial.
The load average is printed because the figures are only comparable on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import math
import resource
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

#: Transactions per registered terminal and day at the default scenario settings
#: (measured; terminals outside their trial window do not trade).
ROWS_PER_TERMINAL_DAY = 49.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trialguard bench simulate``."""
    parser.add_argument(
        "--rows", type=int, default=10_000_000, help="transactions to simulate (about)"
    )
    parser.add_argument("--days", type=int, default=10, help="days the rows are spread over")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv", dest="fmt")
    parser.add_argument(
        "--out", default=None, help="keep the output here (default: a temporary folder, removed)"
    )


def run(args: argparse.Namespace, settings: object) -> int:
    """Run the benchmark and print its figures."""
    from pipelines.progress import print_summary, steps
    from pipelines.simulate.trial import write_trial

    if args.rows < 1 or args.days < 1:
        raise SystemExit(f"--rows and --days must be positive, got {args.rows} and {args.days}")
    terminals = max(20, math.ceil(args.rows / (args.days * ROWS_PER_TERMINAL_DAY)))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tg-bench-sim-"))
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    try:
        with steps("bench simulate", total=args.days) as bar:
            report = write_trial(
                out,
                terminals,
                args.days,
                date(2025, 9, 1),
                args.seed,
                fmt=args.fmt,
                on_day=lambda day, n: bar.advance(f"{day}: {n:,} transactions"),
            )
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        size = sum(p.stat().st_size for p in report.files if p.exists())
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    rows = report.counts["transactions"]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = report.seconds
    print_summary(
        "bench simulate",
        {
            "terminals": terminals,
            "days": args.days,
            "transactions": rows,
            "largest day (rows)": report.max_day_rows,
            "terminal events": report.counts["terminal_events"],
            "wall seconds": f"{wall:.1f}",
            "CPU seconds": f"{cpu:.1f}",
            "rows / s (wall)": f"{rows / wall:,.0f}",
            "world / generate / wait for writer / judge (s)": (
                f"{s['world']:.1f} / {s['generate']:.1f} / {s['write']:.1f} / {s['truth']:.1f}"
            ),
            "output (MiB)": f"{size / 2**20:,.0f}",
            "peak RSS (MiB)": f"{peak_mib:,.0f}",
            "load average (1 min)": f"{_load():.1f}",
        },
    )
    return 0


def _load() -> float:
    try:
        import os

        return os.getloadavg()[0]
    except OSError:
        return float("nan")
