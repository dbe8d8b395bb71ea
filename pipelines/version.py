"""The code version recorded in every ``runs`` row."""

from __future__ import annotations

import functools
import subprocess

from pipelines.settings import PROJECT_ROOT


@functools.cache
def code_version() -> str:
    """Package version plus git commit (``+dirty`` when the tree has changes), if known."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("trialguard")
    except PackageNotFoundError:  # not installed: running from a source tree
        base = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return base
    return f"{base}+g{sha}{'.dirty' if dirty else ''}"
