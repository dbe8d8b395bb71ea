"""``trialguard serve``: the nightly deployment served on a cron schedule.

A Prefect ``Runner`` serves the ``nightly`` flow of :mod:`pipelines.flows` as
the deployment ``nightly/trialguard-nightly`` (loaded by module path,
``pipelines.flows.nightly``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipelines.flows import nightly_flow
from pipelines.settings import Settings

DEFAULT_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "Asia/Shanghai"
DEPLOYMENT_NAME = "trialguard-nightly"


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def main(args: argparse.Namespace, settings: Settings) -> int:
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
