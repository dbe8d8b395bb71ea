"""``trialguard ingest``: the command line, the Prefect ingest flow and the accounting it prints (rows read = accepted + quarantined + duplicates per file)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from features.schema import (
    INPUT_KINDS,
)
from pipelines.ingest.load import ingest_paths
from pipelines.ingest.results import IngestReport
from pipelines.settings import Settings


def ingest_flow(paths: list[str], db: str | None = None, kind: str | None = None) -> dict:
    """Prefect flow running :func:`ingest_paths`; returns the totals (raises if not ok)."""
    return _prefect_ingest_flow()(paths, db=db, kind=kind)


_FLOW = None


def _prefect_ingest_flow():
    global _FLOW
    if _FLOW is None:
        from prefect import flow, task
        from prefect.cache_policies import NO_CACHE

        @task(name="ingest files", cache_policy=NO_CACHE)
        def ingest_task(paths: list[str], db: str | None, kind: str | None) -> dict:
            report = ingest_paths(Settings.from_env(db=db), paths, kind=kind)
            return {
                "ok": report.ok,
                "totals": report.totals,
                "files": [asdict(f) for f in report.files],
            }

        @flow(name="ingest", log_prints=True)
        def _ingest(paths: list[str], db: str | None = None, kind: str | None = None) -> dict:
            # load -> validate -> write, per file, each file atomic
            out = ingest_task(paths, db, kind)
            print(f"ingest totals: {out['totals']}")
            if not out["ok"]:
                raise RuntimeError(
                    f"ingest finished with problems: {out['totals']['files_rejected']} file(s) "
                    f"rejected, {out['totals']['gates_failed']} gate(s) failed; see "
                    "ingest_manifest and gate_results"
                )
            return out["totals"]

        _FLOW = _ingest
    return _FLOW


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard ingest``."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to ingest")
    parser.add_argument(
        "--kind",
        choices=list(INPUT_KINDS),
        default=None,
        help="input kind of every non-TOML file (default: recognised from the columns)",
    )
    parser.add_argument(
        "--no-gate",
        action="store_true",
        help="skip the Great Expectations gate and Data Docs",
    )


def print_report(report: IngestReport, out: Any = None) -> None:
    """Per-file accounting table and totals (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out or sys.stdout, width=140)
    table = Table(title=f"ingest {report.run_id}")
    for head in (
        "file",
        "kind",
        "status",
        "read",
        "accepted",
        "quarantined",
        "duplicates",
        "pan redacted",
        "gate",
        "message",
    ):
        table.add_column(head, overflow="fold")
    for f in report.files:
        gate = "-" if f.gate_success is None else ("pass" if f.gate_success else "FAILED")
        table.add_row(
            Path(f.path).name,
            f.kind or "?",
            f.status,
            f"{f.rows_read:,}",
            f"{f.accepted:,}",
            f"{f.quarantined:,}",
            f"{f.duplicates:,}",
            f"{f.pan_redactions:,}",
            gate,
            f.message,
        )
    t = report.totals
    table.add_row(
        "total",
        "",
        f"{t['files_loaded']} loaded, {t['files_rejected']} rejected, {t['files_skipped']} skipped",
        f"{t['rows_read']:,}",
        f"{t['accepted']:,}",
        f"{t['quarantined']:,}",
        f"{t['duplicates']:,}",
        f"{t['pan_redactions']:,}",
        f"{t['gates_failed']} failed",
        f"{report.seconds:.1f} s",
    )
    console.print(table)


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``trialguard ingest``: 0 when every file loaded and passed its gate, else 1."""
    try:
        report = ingest_paths(settings, args.paths, kind=args.kind, gate=not args.no_gate)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_report(report)
    if not report.ok:
        t = report.totals
        print(
            f"ingest finished with problems: {t['files_rejected']} file(s) rejected, "
            f"{t['gates_failed']} quality gate(s) failed; see the table above, "
            "ingest_manifest and gate_results",
            file=sys.stderr,
        )
        return 1
    return 0
