"""``trialguard serve``: the nightly deployment, its cron schedule, and a triggered run.

Against the real local Prefect API of the session harness: the Runner creates
the deployment, the test reads it back through the Prefect client, triggers a
run with ``run_deployment`` and waits for it to complete in the runner's worker
process (~30 s).
"""

from __future__ import annotations

import asyncio
import json
from datetime import date

import pytest

from pipelines.schedule import DEPLOYMENT_NAME, build_runner
from pipelines.settings import Settings
from pipelines.storage import connect


async def _serve_and_trigger(settings: Settings, landing, as_of: date):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    runner, deployment_id = await build_runner(
        settings, landing, cron="0 2 * * *", timezone="Asia/Shanghai", poll_seconds=1
    )
    async with get_client() as client:
        deployment = await client.read_deployment(deployment_id)
    serving = asyncio.create_task(runner.start())
    try:
        flow_run = await run_deployment(
            name=f"nightly/{DEPLOYMENT_NAME}",
            parameters={"as_of": as_of.isoformat(), "report": False},
            timeout=240,
        )
    finally:
        await runner.astop()
        await asyncio.wait_for(serving, 60)
    return deployment, flow_run


@pytest.mark.usefixtures("prefect_harness", "pan_key_env")
def test_serve_creates_scheduled_deployment_and_a_triggered_run_completes(
    small_trial_db_copy, small_trial_landing
):
    # The landing is already ingested into this copy; the run re-hashes it, finds
    # nothing new, detects and records itself (the full ingest is in test_flows).
    settings = Settings.from_env(db=small_trial_db_copy)
    deployment, flow_run = asyncio.run(
        _serve_and_trigger(settings, small_trial_landing, date(2025, 9, 2))
    )

    (schedule,) = deployment.schedules
    assert schedule.active
    assert schedule.schedule.cron == "0 2 * * *"
    assert schedule.schedule.timezone == "Asia/Shanghai"
    assert deployment.parameters["landing"] == str(small_trial_landing.resolve())
    assert deployment.parameters["db"] == str(settings.db_path.resolve())

    assert flow_run.state.is_completed(), flow_run.state.message
    con = connect(settings.db_path, read_only=True)
    try:
        status, counts = con.execute(
            "SELECT status, CAST(row_counts AS VARCHAR) FROM runs "
            "WHERE command = 'nightly' AND as_of = DATE '2025-09-02'"
        ).fetchone()
        n_flags = con.execute("SELECT count(*) FROM flags").fetchone()[0]
    finally:
        con.close()
    assert status == "succeeded", counts
    assert json.loads(counts)["ingest"]["files_seen"] > 0
    assert n_flags > 0
