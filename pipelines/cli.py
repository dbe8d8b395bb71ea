"""The ``trialguard`` command line.

Each sub-command lives in its own module, which provides ``add_arguments(parser)``
and ``main(args, settings) -> int``. Heavy imports (Prefect, Great Expectations)
stay inside those functions so that ``trialguard --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pipelines.settings import MissingKeyError, Settings

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("pipelines.simulate", "simulate a trial with ground truth (truth.csv)"),
    "ingest": (
        "pipelines.ingest.cli",
        "load trial files into the database (accept or quarantine every row)",
    ),
    "run": (
        "pipelines.detect.run",
        "detect behaviours for a date or a date range and write flags",
    ),
    "evaluate": (
        "pipelines.analyst.evaluate",
        "precision and recall per behaviour against a truth file",
    ),
    "flags": ("pipelines.analyst.queue", "list flags (table, CSV or JSON)"),
    "show": ("pipelines.analyst.casefile", "the case file of one terminal"),
    "review": ("pipelines.analyst.review", "record an analyst's decision on a flag"),
    "verdicts": (
        "pipelines.analyst.verdicts",
        "trial-end recommendations: pass, extend or terminate",
    ),
    "report": ("pipelines.analyst.report", "write the offline HTML report for a date"),
    "backtest": (
        "pipelines.analyst.backtest",
        "replay detection with a candidate config without touching live flags",
    ),
    "serve": ("pipelines.schedule", "serve the nightly deployment on a cron schedule"),
    "nightly": ("pipelines.flows", "run the nightly flow once for a date"),
    "demo": ("pipelines.demo", "simulate a trial and run the whole pipeline on it"),
    "bench": ("pipelines.bench", "benchmarks: ingest, simulate, kernels, run"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="trialguard",
        description="Fraud and anomaly monitoring for POS terminals in their trial period.",
    )
    parser.add_argument(
        "--db",
        default=None,
        help="DuckDB file (default: $TRIALGUARD_DB or data/warehouse/trialguard.duckdb)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that part of the product is not built yet
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--db", default=argparse.SUPPRESS, help="DuckDB file")
        adder = getattr(module, f"add_{name}_arguments", None) or module.add_arguments
        adder(p)
        p.set_defaults(_module=module, _entry=getattr(module, f"main_{name}", None) or module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trialguard`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    settings = Settings.from_env(db=getattr(args, "db", None))
    # Prefect's temporary local API (used when no server is configured) can take well
    # over its 20 s default to start on a busy 2-core machine, more so on first use.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if not sys.stdout.isatty():
        # Tables printed to a pipe or a log keep their columns instead of rich's 80.
        os.environ.setdefault("COLUMNS", "160")
    try:
        return int(args._entry(args, settings) or 0)
    except MissingKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
