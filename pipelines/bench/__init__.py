"""``trialguard bench``: speed and memory benchmarks (figures go in the docs, never in tests).

Each benchmark lives in its own module ``pipelines.bench.<name>`` exposing
``add_arguments(parser)`` and ``run(args, settings) -> int``; every figure is a
ratio against a baseline measured in the same process.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS: dict[str, str] = {
    "ingest": "ingest one simulated day vs DuckDB's all-text CSV load",
    "simulate": "simulator throughput and memory",
    "kernels": "each numba kernel vs its best polars/numpy formulation",
    "run": "detection on one day at scale; day-60 vs day-5 cost",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one sub-parser per available benchmark."""
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, help_text in BENCHMARKS.items():
        module_name = f"pipelines.bench.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_bench=module.run)


def main(args: argparse.Namespace, settings) -> int:
    """Run the chosen benchmark."""
    return int(args._bench(args, settings) or 0)
