"""Shared test fixtures. Prefect's test harness lives in tests/pipelines/conftest.py only."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

TEST_PAN_KEY = "test-key-0123456789abcdef0123456789abcdef"


@pytest.fixture
def pan_key_env(monkeypatch):
    """A card-number key in the environment, as an operator would set it."""
    monkeypatch.setenv("TRIALGUARD_PAN_KEY", TEST_PAN_KEY)
    return TEST_PAN_KEY
