"""``trialguard demo``: simulate a trial and run the whole nightly pipeline on it.

What ``make demo`` runs. Deterministic and idempotent: the simulator writes the
same bytes for the same parameters (and is skipped when its output is already
there), ingest skips files it has loaded before, and detection re-runs give the
same flags, so a second ``make demo`` adds no data rows (only a ``runs`` record).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import date, timedelta
from pathlib import Path

from pipelines.settings import Settings

DEFAULT_START = date(2025, 9, 1)
DEFAULT_SEED = 7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trialguard demo``."""
    parser.add_argument("--out", default="data/demo", help="where the simulated trial goes")
    parser.add_argument("--terminals", type=int, default=2000, help="trial terminals")
    parser.add_argument("--days", type=int, default=30, help="days of trading")
    parser.add_argument("--start", type=date.fromisoformat, default=DEFAULT_START)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--top", type=int, default=10, help="rows of the review queue to print")
    parser.add_argument(
        "--follow-up-days",
        type=int,
        default=60,
        help="nights to keep monitoring after the last trading day, while late fraud "
        "reports arrive (common point of compromise needs them; default 60, domain.md "
        "§2.1: fraud comes weeks after the compromise and is reported weeks after that)",
    )


def simulator_version() -> str:
    """Hash of the simulator's source: a changed simulator invalidates an old demo trial."""
    package = Path(__file__).resolve().parent / "simulate"
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def simulate_once(out: Path, terminals: int, days: int, start: date, seed: int) -> bool:
    """Write the simulated trial unless the same one is already there; True if written."""
    from pipelines.simulate import write_trial

    stamp = out / "simulation.json"
    params = {
        "terminals": terminals,
        "days": days,
        "start": str(start),
        "seed": seed,
        "simulator": simulator_version(),
    }
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return False
    write_trial(out, terminals, days, start, seed)
    stamp.write_text(json.dumps(params))  # written last: a crashed simulation is redone
    return True


def ingest_accounting(settings: Settings) -> dict[str, int]:
    """Totals of the ingest manifest: files and rows read/accepted/quarantined/duplicates."""
    from pipelines.storage import connect

    con = connect(settings.db_path, read_only=True)
    try:
        row = con.execute(
            """
            SELECT count(*) FILTER (WHERE status = 'loaded'),
                   count(*) FILTER (WHERE status = 'rejected'),
                   coalesce(sum(rows_read), 0), coalesce(sum(accepted), 0),
                   coalesce(sum(quarantined), 0), coalesce(sum(duplicates), 0),
                   coalesce(sum(pan_redactions), 0)
            FROM ingest_manifest
            """
        ).fetchone()
        stored = {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("terminals", "transactions", "terminal_events", "fraud_reports", "flags")
        }
    finally:
        con.close()
    keys = (
        "files loaded",
        "files rejected",
        "rows read",
        "accepted",
        "quarantined",
        "duplicates",
        "card numbers redacted",
    )
    return dict(zip(keys, row, strict=True)) | {f"{k} stored": v for k, v in stored.items()}


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Simulate, run the nightly flow over the whole trial, print where the report is."""
    settings.pan_key()  # fail early and clearly when there is no card-number key
    out = Path(args.out)
    last_day = args.start + timedelta(days=args.days - 1)
    as_of = last_day + timedelta(days=args.follow_up_days)
    print(f"1/4 simulating {args.terminals:,} terminals x {args.days} days into {out} ...")
    if not simulate_once(out, args.terminals, args.days, args.start, args.seed):
        print("    already simulated with these parameters: reusing it")

    print(
        f"2/4 nightly flow as of {as_of} ({args.follow_up_days} nights after the last trading "
        "day, as fraud reports arrive late): ingest, validate, detect every night, report ..."
    )
    from pipelines.flows import nightly

    result = nightly(
        as_of=as_of,
        landing=str(out / "landing"),
        db=str(settings.db_path),
        report=True,
        max_backfill_days=args.days + args.follow_up_days + 1,
    )
    report_path = ((result or {}).get("counts", {}).get("report") or {}).get("path")

    print("\n3/4 ingest accounting (rows read = accepted + quarantined + duplicates):")
    for k, v in ingest_accounting(settings).items():
        print(f"    {k:<28} {v:>12,}")

    from pipelines.analyst.common import open_db
    from pipelines.analyst.queue import format_flags_table, query_flags

    con = open_db(settings)
    try:
        queue = query_flags(con, as_of=as_of, limit=args.top)
    finally:
        con.close()
    print(format_flags_table(queue, title=f"Review queue (top {args.top}, open flags)"))

    print("4/4 detection quality against the simulator's truth:")
    from pipelines.analyst.evaluate import main as evaluate_main

    evaluate_main(
        argparse.Namespace(truth=out / "truth.csv", date_from=None, date_to=None, k=[50, 100],
                           json=False),
        settings,
    )  # fmt: skip
    print(f"\ndatabase: {settings.db_path}")
    print(f"report:   {report_path or 'not written'}")
    return 0 if report_path else 1
