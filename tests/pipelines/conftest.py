"""Fixtures for pipeline tests.

``prefect_harness`` (session scope, NOT autouse) starts ONE temporary local
Prefect API server (SQLite under a temp folder, ~10 s) for the whole test
session. Every test that runs a Prefect flow, task, deployment or runner must
request it, by argument or with ``@pytest.mark.usefixtures("prefect_harness")``;
never start another ``prefect_test_harness`` in a test module. Tests of plain
functions should not request it, so they don't pay for the server start.

Inside the harness ``PREFECT_API_URL`` points at that server, so flows run
against a real API (states, logs, deployments, schedules) and nothing is written
to the developer's own Prefect profile database.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary local Prefect API for the whole session (see the module docstring)."""
    from prefect.testing.utilities import prefect_test_harness

    # 180 s is a ceiling for a loaded machine; the server starts in ~10 s when idle.
    with prefect_test_harness(server_startup_timeout=180):
        yield


SMALL_TRIAL_START = "2025-09-01"
SMALL_TRIAL_DAYS = 4


@pytest.fixture(scope="session")
def small_trial_landing(tmp_path_factory):
    """A small simulated trial written to disk (30 terminals, 4 days from 2025-09-01).

    Returns the ``landing/`` folder (terminals, transactions per day, events,
    fraud reports, policies.toml). Shared read-only: copy it before changing it.
    """
    from datetime import date

    from pipelines.simulate import write_trial

    out = tmp_path_factory.mktemp("small_trial")
    write_trial(out, 30, SMALL_TRIAL_DAYS, date.fromisoformat(SMALL_TRIAL_START), 7)
    return out / "landing"


#: The card-number key of the shared fixtures: the same as ``tests/conftest.py``'s
#: ``TEST_PAN_KEY`` (the ``pan_key_env`` fixture), so later ingests tokenise alike.
FIXTURE_PAN_KEY = "test-key-0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="session")
def small_trial_db(tmp_path_factory, small_trial_landing):
    """A DuckDB file with :func:`small_trial_landing` ingested (no detection run yet).

    Shared: use :func:`small_trial_db_copy` to get a copy you may write to.
    """
    from pipelines.ingest.load import ingest_paths
    from pipelines.settings import Settings

    db = tmp_path_factory.mktemp("small_trial_db") / "trialguard.duckdb"
    settings = Settings.from_env(env={"TRIALGUARD_PAN_KEY": FIXTURE_PAN_KEY}, db=db)
    # gate=False: this is set-up data for serve/backtest tests, not an ingest test;
    # the Great Expectations gate would add ~15 s (test_flows runs it end to end).
    report = ingest_paths(settings, [small_trial_landing], gate=False)
    assert report.ok, report.totals
    return db


@pytest.fixture
def small_trial_db_copy(small_trial_db, tmp_path):
    """A private copy of :func:`small_trial_db` (with its WAL, if any) under ``tmp_path``."""
    import shutil

    dst = tmp_path / small_trial_db.name
    shutil.copy2(small_trial_db, dst)
    wal = small_trial_db.with_name(small_trial_db.name + ".wal")
    if wal.exists():
        shutil.copy2(wal, dst.with_name(dst.name + ".wal"))
    return dst
