"""The nightly run as a Prefect flow and ``trialguard nightly`` (served by :mod:`pipelines.schedule`).

The flow reads like the pipeline::

    nightly 2026-03-14
      ingest landing          new files only (ingest is idempotent by content hash)
      detect 2026-03-13       a missed night, backfilled first (in date order)
      detect 2026-03-14
      write report

Every task is a thin wrapper over a plain function in this module (or in
``pipelines.ingest.landing`` / ``pipelines.detect.nightly`` / ``pipelines.analyst.report``); the plain
functions return numbers, the tasks log them. The whole run holds the
database's run lock (:mod:`pipelines.runlock`) and is recorded in ``runs``:
status ``running`` when it starts, then ``succeeded`` or ``failed`` with the
inputs (content hashes), code, config and policy versions, row counts per stage
and duration. A run that crashed (its process died) is left ``running``; the
next nightly marks it ``failed`` and a rerun of that date is safe (detection is
idempotent per date, dispositions are never touched).

Missed nights: if the last successful detection (``nightly`` or ``run``) is
more than one day before ``as_of``, the days in between are detected first, in
order, up to ``max_backfill_days`` (default 31); a longer gap fails the run with
the exact ``trialguard run --from ... --to ...`` command to close it. With no
earlier successful run, the nights from the first with transactions (on or after
the earliest trial start in the registry) are the missed ones. A date at or before the last success is a rerun of that
date only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import typing
import uuid
from datetime import date
from pathlib import Path
from typing import Any

from pipelines.detect.cluster import add_runner_arguments
from pipelines.detect.nightly import (
    MAX_BACKFILL_DAYS,
    dates_to_detect,
    default_as_of,
    detect_day,
    finish_run,
    first_trial_date,
    last_detected_date,
    start_run,
)
from pipelines.ingest.landing import ingest_landing, landing_inputs
from pipelines.settings import Settings

#: Detection counts shown per night in the command's summary.
SUMMARY_DETECT_KEYS = ("transactions", "detections", "flags", "new_flags", "at_risk_cards")


def write_day_report(settings: Settings, as_of: date) -> str | None:
    """Write the HTML report for ``as_of``; ``None`` when the report module is absent."""
    try:
        from pipelines.analyst.report import write_report
    except ModuleNotFoundError as exc:
        if exc.name == "pipelines.analyst.report":
            return None
        raise
    return str(write_report(settings, as_of))


# ---------------------------------------------------------------------------
# Prefect tasks: thin, they log what the plain functions return
# ---------------------------------------------------------------------------


def _tasks():
    """The Prefect tasks (built on first use so importing this module stays light)."""
    global _TASKS
    if _TASKS is not None:
        return _TASKS
    from prefect import get_run_logger, task
    from prefect.cache_policies import NO_CACHE

    @task(name="ingest landing", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
    def ingest_landing_task(settings: Settings, landing: str) -> dict:
        out = ingest_landing(settings, landing)
        c = out["counts"]
        get_run_logger().info(
            "landing %s: %d files, %d new; ingest counts %s",
            landing, c["files_seen"], c["files_new"],
            {k: v for k, v in c.items() if k not in ("files_seen", "files_new")},
        )  # fmt: skip
        if c.get("files_rejected") or c.get("gates_failed"):
            get_run_logger().warning(
                "%d file(s) rejected and %d quality gate(s) failed: see ingest_manifest, "
                "gate_results and quarantine; detection goes on with what was loaded",
                c.get("files_rejected", 0), c.get("gates_failed", 0),
            )  # fmt: skip
        return out

    @task(name="detect", task_run_name="detect {day}", retries=1, retry_delay_seconds=10,
          cache_policy=NO_CACHE)  # fmt: skip
    def detect_task(
        settings: Settings, day: date, config: dict | None, run_id: str, runner: dict | None
    ) -> dict:
        c = detect_day(settings, day, config, run_id, runner)
        get_run_logger().info(
            "detect %s: %d transactions, %d detections, %d flags touched (%d new), "
            "%d at-risk cards; by behaviour %s",
            day, c.get("transactions", 0), c.get("detections", 0), c.get("flags", 0),
            c.get("new_flags", 0), c.get("at_risk_cards", 0), c.get("by_behaviour", {}),
        )  # fmt: skip
        return c

    @task(name="write report", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
    def report_task(settings: Settings, as_of: date) -> str | None:
        path = write_day_report(settings, as_of)
        get_run_logger().info("report for %s: %s", as_of, path or "skipped (no report module)")
        return path

    _TASKS = {"ingest": ingest_landing_task, "detect": detect_task, "report": report_task}
    return _TASKS


_TASKS: dict | None = None


def _nightly_body(
    as_of: date | None,
    landing: str,
    db: str | None,
    config: str | None,
    report: bool,
    max_backfill_days: int,
    runner: dict[str, Any],
) -> dict[str, Any]:
    """What the ``nightly`` flow does (kept outside the decorator for readability)."""
    from prefect import get_run_logger
    from prefect.runtime import flow_run

    from pipelines.runlock import run_lock
    from pipelines.storage import connect

    t = _tasks()
    logger = get_run_logger()
    settings = Settings.from_env(db=db)
    if as_of is None:
        as_of = default_as_of(settings, flow_run.scheduled_start_time)
    run_id = f"nightly-{as_of}-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    with run_lock(settings, "nightly") as stale:
        if stale is not None:
            logger.warning("took over a stale run lock left by %s", stale.describe())
        start_run(settings, run_id, "nightly", as_of, config_path=config)
        counts: dict[str, Any] = {}
        inputs: list[dict] = []
        try:
            if not Path(landing).is_dir():  # not worth the I/O retries of the ingest task
                landing_inputs(landing)
            cfg = None
            if config is not None:
                from models.config import load_config

                cfg = load_config(config)
            # 1. ingest: new landing files -> validate -> load (quarantine what fails)
            ingested = t["ingest"](settings, landing)
            inputs, counts["ingest"] = ingested["inputs"], ingested["counts"]
            # 2. detect: missed nights first, in date order, then as_of
            con = connect(settings.db_path)
            try:
                days = dates_to_detect(
                    last_detected_date(con), as_of, max_backfill_days, first_trial_date(con)
                )
            finally:
                con.close()
            if len(days) > 1:
                logger.info("backfilling %d missed nights before %s", len(days) - 1, as_of)
            with contextlib.ExitStack() as stack:
                if runner["task_runner"] == "dask" and not runner["dask_address"]:
                    # one LocalCluster for every night of the run, not one per night
                    from pipelines.detect.cluster import dask_cluster

                    cluster = stack.enter_context(dask_cluster(None))
                    runner = {**runner, "dask_address": cluster.address}
                    logger.info("Dask dashboard: %s", cluster.dashboard)
                counts["detect"] = {
                    str(d): t["detect"](settings, d, cfg, f"{run_id}-detect-{d}", runner)
                    for d in days
                }
            # 3. report
            if report:
                counts["report"] = {"path": t["report"](settings, as_of)}
        except BaseException as exc:
            finish_run(
                settings, run_id, status="failed", inputs=inputs, row_counts=counts,
                message=f"{type(exc).__name__}: {exc}", duration_s=time.perf_counter() - started,
            )  # fmt: skip
            raise
        duration = time.perf_counter() - started
        finish_run(
            settings, run_id, status="succeeded", inputs=inputs, row_counts=counts,
            duration_s=duration,
        )  # fmt: skip
    logger.info("nightly %s succeeded in %.1fs: %s", as_of, duration, json.dumps(counts))
    return {"run_id": run_id, "as_of": str(as_of), "counts": counts, "duration_s": duration}


def _build_nightly_flow():
    from prefect import flow

    def nightly(
        as_of: date | None = None,
        landing: str = "data/landing",
        db: str | None = None,
        config: str | None = None,
        report: bool = True,
        max_backfill_days: int = MAX_BACKFILL_DAYS,
        task_runner: str = "local",
        dask_address: str | None = None,
        spill_dir: str | None = None,
    ) -> dict:
        """Ingest the landing folder, detect (backfilling missed nights), report; record the run.

        ``as_of`` defaults to yesterday in the data's time zone (for scheduled runs).
        ``task_runner="dask"`` runs the per-terminal partitions on the Dask scheduler
        at ``dask_address`` (default ``$TRIALGUARD_DASK_ADDRESS``, else a LocalCluster).
        """
        from pipelines.detect.cluster import check_task_runner
        from pipelines.detect.cluster import dask_address as resolve

        runner = {
            "task_runner": check_task_runner(task_runner),
            "dask_address": resolve(dask_address),
            "spill_dir": spill_dir,
        }
        return _nightly_body(as_of, landing, db, config, report, max_backfill_days, runner)

    fn = nightly
    # Resolve the string annotations (``from __future__ import annotations``) now: a
    # Runner ships the flow to its worker process by value, without this module's
    # globals, and Prefect builds the parameter model from these annotations there.
    fn.__annotations__ = typing.get_type_hints(fn)
    return flow(name="nightly", flow_run_name="nightly {as_of}", log_prints=True)(fn)


def nightly_flow():
    """The ``nightly`` Prefect flow (built once, on first use)."""
    flow_obj = globals().get("nightly")
    if flow_obj is None:
        flow_obj = _build_nightly_flow()
        globals()["nightly"] = flow_obj
    return flow_obj


def __getattr__(name: str):
    # `from pipelines.flows import nightly` builds the flow on first access, so that
    # `trialguard --help` never imports Prefect. Deployments load the flow by module
    # path (pipelines.flows.nightly), which goes through here too.
    if name == "nightly":
        return nightly_flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def add_nightly_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard nightly``."""
    parser.add_argument(
        "--date", type=date.fromisoformat, default=None,
        help="night to cover, YYYY-MM-DD (default: yesterday in TRIALGUARD_TIMEZONE)",
    )  # fmt: skip
    parser.add_argument("--landing", required=True, help="folder the daily exports arrive in")
    parser.add_argument("--config", default=None, help="threshold overrides (TOML)")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    parser.add_argument(
        "--max-backfill-days", type=int, default=MAX_BACKFILL_DAYS,
        help=f"most missed nights detected before --date (default {MAX_BACKFILL_DAYS})",
    )  # fmt: skip
    add_runner_arguments(parser)


def main_nightly(args: argparse.Namespace, settings: Settings) -> int:
    """Run the nightly flow once, locally, and print its summary."""
    import sys

    from pipelines.progress import print_summary
    from pipelines.runlock import RunLockError

    try:
        out = nightly_flow()(
            as_of=args.date,
            landing=str(args.landing),
            db=str(settings.db_path),
            config=args.config,
            report=not args.no_report,
            max_backfill_days=args.max_backfill_days,
            task_runner=args.task_runner,
            dask_address=args.dask_address,
            spill_dir=args.spill_dir,
        )
    except (RunLockError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = out["counts"]
    rows: dict[str, object] = {"run_id": out["run_id"], "as_of": out["as_of"]}
    for key, value in counts.get("ingest", {}).items():
        if isinstance(value, (int, float)):
            rows[f"ingest {key}"] = value
    for day, c in counts.get("detect", {}).items():
        rows[f"detect {day}"] = ", ".join(
            f"{c[k]:,} {k.replace('_', ' ')}" for k in SUMMARY_DETECT_KEYS if k in c
        )
    if counts.get("report", {}).get("path"):
        rows["report"] = counts["report"]["path"]
    rows["duration"] = f"{out['duration_s']:.1f}s"
    print_summary("nightly run", rows)
    return 0
