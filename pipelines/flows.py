"""The nightly run as a Prefect flow, its schedule (``trialguard serve``) and ``trialguard nightly``.

The flow reads like the pipeline::

    nightly 2026-03-14
      ingest landing          new files only (ingest is idempotent by content hash)
      detect 2026-03-13       a missed night, backfilled first (in date order)
      detect 2026-03-14
      write report

Every task is a thin wrapper over a plain function in this module (or in
``pipelines.ingest.load`` / ``pipelines.detect.run`` / ``pipelines.analyst.report``); the plain
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
import hashlib
import json
import time
import typing
import uuid
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipelines.settings import Settings
from pipelines.version import code_version

DEFAULT_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "Asia/Shanghai"
DEPLOYMENT_NAME = "trialguard-nightly"
MAX_BACKFILL_DAYS = 31
#: Commands whose successful runs count as "detection done for as_of".
DETECTION_COMMANDS = ("nightly", "run")
_HASH_CHUNK = 1 << 20
#: Detection counts shown per night in the command's summary.
SUMMARY_DETECT_KEYS = ("transactions", "detections", "flags", "new_flags", "at_risk_cards")


# ---------------------------------------------------------------------------
# Plain functions (tested without Prefect)
# ---------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (the ``file_id`` ingest records in its manifest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def config_version_of(config_path: str | Path | None) -> str:
    """sha256 of the merged detection config (``models/thresholds.toml`` + candidate)."""
    from models.config import config_version, load_config

    return config_version(load_config(config_path))


def policy_version_of(con) -> str:
    """Version of the policies in force (as detection records it), ``"none"`` if none loaded."""
    from pipelines.detect.run import load_policies, policy_version

    policies = load_policies(con)
    return policy_version(policies) if policies else "none"


def landing_inputs(landing: str | Path) -> list[dict[str, Any]]:
    """Every file under the landing folder with its content hash, in path order.

    Hidden files and folders (``.``-prefixed) are skipped.
    """
    root = Path(landing)
    if not root.is_dir():
        raise FileNotFoundError(
            f"landing folder {root} does not exist or is not a folder; pass the folder "
            "the acquirer's exports arrive in (--landing), e.g. the `landing/` folder "
            "written by `trialguard simulate --out DIR`"
        )
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        out.append({"path": str(rel), "file_id": file_sha256(path), "bytes": path.stat().st_size})
    return out


def known_file_ids(con) -> set[str]:
    """Content hashes already recorded by ingest (loaded or rejected)."""
    return {r[0] for r in con.execute("SELECT DISTINCT file_id FROM ingest_manifest").fetchall()}


def _as_int_counts(obj: Any) -> Any:
    """Counts as plain JSON values (numpy/polars integers become int)."""
    if isinstance(obj, dict):
        return {str(k): _as_int_counts(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_as_int_counts(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _report_counts(report: Any) -> dict[str, Any]:
    """Numbers of an ``IngestReport`` (whatever its exact shape) as a JSON-ready dict."""
    if report is None:
        return {}
    for attr in ("counts", "totals", "summary"):
        value = getattr(report, attr, None)
        value = value() if callable(value) else value
        if isinstance(value, dict):
            return _as_int_counts(value)
    if hasattr(report, "__dataclass_fields__"):
        out = {}
        for name in report.__dataclass_fields__:
            value = getattr(report, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[name] = value
        return _as_int_counts(out)
    return {}


def ingest_landing(settings: Settings, landing: str | Path) -> dict[str, Any]:
    """Ingest the landing folder's new files; return inputs (with hashes) and counts.

    A file whose content hash is already in ``ingest_manifest`` is not read again
    (to retry a rejected file, run ``trialguard ingest FILE`` on it explicitly).
    """
    from pipelines.ingest.load import ingest_paths
    from pipelines.storage import connect

    root = Path(landing)
    inputs = landing_inputs(root)
    con = connect(settings.db_path)
    try:
        known = known_file_ids(con)
        for item in inputs:
            item["status"] = "known" if item["file_id"] in known else "new"
        new = [root / i["path"] for i in inputs if i["status"] == "new"]
        report = ingest_paths(settings, new, con=con) if new else None
    finally:
        con.close()
    counts = {"files_seen": len(inputs), "files_new": len(new), **_report_counts(report)}
    return {"inputs": inputs, "counts": counts}


def last_detected_date(con) -> date | None:
    """``as_of`` of the latest successful detection run (``nightly`` or ``run``)."""
    marks = ", ".join(f"'{c}'" for c in DETECTION_COMMANDS)
    row = con.execute(
        f"SELECT max(as_of) FROM runs WHERE status = 'succeeded' AND command IN ({marks})"
    ).fetchone()
    return row[0] if row else None


def first_trial_date(con) -> date | None:
    """The first night with transactions since the earliest trial start (``None`` if none).

    Bounded by the registry's ``trial_start`` because a terminal with a skewed
    clock can report transactions dated 1970 or 2000 (detected as malfunction).
    """
    row = con.execute(
        "SELECT min(local_date) FROM transactions "
        "WHERE local_date >= (SELECT min(trial_start) FROM terminals)"
    ).fetchone()
    return row[0] if row else None


def dates_to_detect(
    last_success: date | None,
    as_of: date,
    max_backfill_days: int = MAX_BACKFILL_DAYS,
    first_data: date | None = None,
) -> list[date]:
    """The nights to detect, in order, so that no night since the last success is skipped.

    With no successful detection yet, the nights from ``first_data`` (the first
    night with trial data) are the missed ones.

    Examples
    --------
    >>> dates_to_detect(date(2026, 3, 11), date(2026, 3, 14))
    [datetime.date(2026, 3, 12), datetime.date(2026, 3, 13), datetime.date(2026, 3, 14)]
    >>> dates_to_detect(None, date(2026, 3, 14), first_data=date(2026, 3, 13))
    [datetime.date(2026, 3, 13), datetime.date(2026, 3, 14)]
    >>> dates_to_detect(None, date(2026, 3, 14))
    [datetime.date(2026, 3, 14)]
    >>> dates_to_detect(date(2026, 3, 20), date(2026, 3, 14))  # a rerun
    [datetime.date(2026, 3, 14)]
    """
    if last_success is None and first_data is not None and first_data < as_of:
        last_success = first_data - timedelta(days=1)
    if last_success is None or last_success >= as_of:
        return [as_of]
    gap = (as_of - last_success).days
    if gap > max_backfill_days:
        first = last_success + timedelta(days=1)
        raise ValueError(
            f"{gap} nights from {first} to {as_of} have not been detected; the nightly "
            f"run detects at most {max_backfill_days} (--max-backfill-days). Close the gap "
            f"first with `trialguard run --from {first} --to {as_of - timedelta(days=1)}`, "
            "then rerun the nightly"
        )
    return [last_success + timedelta(days=i) for i in range(1, gap + 1)]


def detect_day(settings: Settings, day: date, config: dict | None, run_id: str) -> dict[str, Any]:
    """Detect one night and persist its flags; return the detection counts."""
    from pipelines.detect.run import run_detection

    result = run_detection(settings, day, config=config, run_id=run_id)
    return _as_int_counts(dict(getattr(result, "counts", {}) or {}))


def write_day_report(settings: Settings, as_of: date) -> str | None:
    """Write the HTML report for ``as_of``; ``None`` when the report module is absent."""
    try:
        from pipelines.analyst.report import write_report
    except ModuleNotFoundError as exc:
        if exc.name == "pipelines.analyst.report":
            return None
        raise
    return str(write_report(settings, as_of))


def start_run(
    settings: Settings,
    run_id: str,
    command: str,
    as_of: date | None,
    *,
    config_path: str | Path | None = None,
) -> datetime:
    """Record a ``running`` row in ``runs`` (and close out crashed runs of ``command``).

    Must be called while holding the run lock: any other ``running`` row of the
    same command then belongs to a process that died.
    """
    from pipelines.storage import connect

    started = datetime.now(ZoneInfo(settings.timezone)).replace(tzinfo=None)
    con = connect(settings.db_path)
    try:
        con.execute(
            "UPDATE runs SET status = 'failed', message = 'crashed: the process ended "
            "before the run finished (found by run ' || ? || ')' "
            "WHERE status = 'running' AND command = ?",
            [run_id, command],
        )
        con.execute(
            "INSERT INTO runs (run_id, command, as_of, started_at, status, code_version, "
            "config_version) VALUES (?, ?, ?, ?, 'running', ?, ?)",
            [run_id, command, as_of, started, code_version(), config_version_of(config_path)],
        )
    finally:
        con.close()
    return started


def finish_run(
    settings: Settings,
    run_id: str,
    *,
    status: str,
    inputs: Iterable[dict] | None,
    row_counts: dict[str, Any],
    message: str = "",
    duration_s: float,
) -> None:
    """Close the ``runs`` row: outcome, inputs, row counts, policy version, duration."""
    from pipelines.storage import connect

    finished = datetime.now(ZoneInfo(settings.timezone)).replace(tzinfo=None)
    con = connect(settings.db_path)
    try:
        con.execute(
            "UPDATE runs SET finished_at = ?, status = ?, inputs = ?, policy_version = ?, "
            "row_counts = ?, duration_s = ?, message = ? WHERE run_id = ?",
            [
                finished,
                status,
                json.dumps(list(inputs or []), default=str),
                policy_version_of(con),
                json.dumps(_as_int_counts(row_counts), default=str),
                round(duration_s, 3),
                message[:2000],
                run_id,
            ],
        )
    finally:
        con.close()


def default_as_of(settings: Settings, now: datetime | None = None) -> date:
    """Yesterday in the data's time zone: the night a scheduled run covers.

    ``now`` is the run's scheduled start (so a late-starting run still covers
    the right night); default the current time.

    Examples
    --------
    >>> from datetime import timezone
    >>> default_as_of(Settings(), datetime(2026, 3, 14, 18, 30, tzinfo=timezone.utc))
    datetime.date(2026, 3, 14)
    """
    zone = ZoneInfo(settings.timezone)
    now = now.astimezone(zone) if now is not None else datetime.now(zone)
    return now.date() - timedelta(days=1)


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
    def detect_task(settings: Settings, day: date, config: dict | None, run_id: str) -> dict:
        c = detect_day(settings, day, config, run_id)
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
            counts["detect"] = {
                str(d): t["detect"](settings, d, cfg, f"{run_id}-detect-{d}") for d in days
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
    ) -> dict:
        """Ingest the landing folder, detect (backfilling missed nights), report; record the run.

        ``as_of`` defaults to yesterday in the data's time zone (for scheduled runs).
        """
        return _nightly_body(as_of, landing, db, config, report, max_backfill_days)

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
# Serving on a schedule
# ---------------------------------------------------------------------------


def nightly_parameters(
    settings: Settings, landing: str | Path, config: str | Path | None = None
) -> dict[str, Any]:
    """Deployment parameters of the nightly run (``as_of`` left to the schedule)."""
    return {
        "landing": str(Path(landing).resolve()),
        "db": str(Path(settings.db_path).resolve()),
        "config": str(Path(config).resolve()) if config else None,
        "report": True,
    }


async def build_runner(
    settings: Settings,
    landing: str | Path,
    *,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    config: str | Path | None = None,
    name: str = DEPLOYMENT_NAME,
    poll_seconds: float | None = None,
):
    """A Prefect ``Runner`` serving the nightly deployment on a cron schedule.

    Returns ``(runner, deployment_id)``; ``await runner.start()`` serves it
    (``trialguard serve`` does this until interrupted). A coroutine, because the
    Runner must be built and started on the same event loop. ``poll_seconds``:
    how often the runner asks the API for due runs (default Prefect's
    ``PREFECT_RUNNER_POLL_FREQUENCY``, 10 s).
    """
    from prefect.deployments.runner import EntrypointType
    from prefect.runner import Runner
    from prefect.schedules import Cron

    try:
        ZoneInfo(timezone)
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"unknown time zone {timezone!r} for the schedule; use an IANA name such as "
            f"{DEFAULT_TIMEZONE!r}"
        ) from exc
    # limit=1: late runs (after the server was down) run one after the other, in
    # schedule order, instead of racing for the run lock. The schedule stays active
    # when serving stops, so missed nights run when it is restarted.
    runner = Runner(
        name=f"{name}-runner", pause_on_shutdown=False, query_seconds=poll_seconds, limit=1
    )
    deployment_id = await runner.aadd_flow(
        nightly_flow(),
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters=nightly_parameters(settings, landing, config),
        description=f"TrialGuard nightly run: ingest {landing}, detect, report",
        tags=["trialguard", "nightly"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return runner, deployment_id


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard serve``."""
    parser.add_argument("--landing", required=True, help="folder the daily exports arrive in")
    parser.add_argument(
        "--cron", default=DEFAULT_CRON, help=f"schedule (default {DEFAULT_CRON!r})"
    )
    parser.add_argument(
        "--timezone",
        default=DEFAULT_TIMEZONE,
        help=f"zone of the cron (default {DEFAULT_TIMEZONE})",
    )
    parser.add_argument("--config", default=None, help="threshold overrides (TOML)")
    parser.add_argument("--name", default=DEPLOYMENT_NAME, help="deployment name")


def main_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the nightly deployment until interrupted (Ctrl-C)."""
    import asyncio
    import sys

    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        print(
            "warning: PREFECT_API_URL is not set, so Prefect serves against a temporary "
            "server that does not run schedules. Start `prefect server start` and "
            "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` first "
            "(docs/operations.md, 'Serving on a schedule').",
            file=sys.stderr,
        )

    async def serve() -> None:
        runner, deployment_id = await build_runner(
            settings,
            args.landing,
            cron=args.cron,
            timezone=args.timezone,
            config=args.config,
            name=args.name,
        )
        print(
            f"serving deployment nightly/{args.name} ({deployment_id}): cron {args.cron!r} "
            f"in {args.timezone}, landing {args.landing}, db {settings.db_path}.\n"
            f"Trigger a run now with: prefect deployment run 'nightly/{args.name}' "
            "--param as_of=YYYY-MM-DD\nStop with Ctrl-C.",
            flush=True,
        )
        await runner.start()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        print("stopped serving")
    return 0


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
