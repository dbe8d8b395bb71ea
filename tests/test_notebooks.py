"""The notebooks run against a tiny demo database, and are stored without outputs.

The demo database is built here the way `make demo` builds it: simulate a small
trial, ingest its landing folder and run detection over every day. The analyst's
commands are checked end to end on the same database through ``trialguard``'s
own command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
START, DAYS = date(2025, 9, 1), 5
LAST = START + timedelta(days=DAYS - 1)
TEST_PAN_KEY = "test-key-0123456789abcdef0123456789abcdef"


def test_there_are_notebooks_and_they_are_stored_without_outputs():
    import nbformat

    assert len(NOTEBOOKS) >= 2, "expected 2-3 notebooks in notebooks/"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3", path.name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name} is stored with outputs; clear them (Kernel > Restart & Clear "
                    "Output, or `jupyter nbconvert --clear-output --inplace`)"
                )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A tiny demo database: simulate + ingest + run, as `make demo` does (no GX gate)."""
    from pipelines.detect.run import run_range
    from pipelines.ingest.load import ingest_paths
    from pipelines.settings import Settings
    from pipelines.simulate import write_trial

    folder = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRIALGUARD_PAN_KEY", TEST_PAN_KEY)
        write_trial(folder, 12, DAYS, START, 11)
        settings = Settings.from_env(db=folder / "warehouse" / "trialguard.duckdb")
        report = ingest_paths(settings, [folder / "landing"], gate=False)
        assert report.ok, report
        run_range(settings, START, LAST)
    return settings, folder / "truth.csv"


def _kernel_ready() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix"], check=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_the_demo_database(path, demo, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    settings, truth = demo
    _kernel_ready()
    monkeypatch.setenv("TRIALGUARD_DB", str(settings.db_path))
    monkeypatch.setenv("TRIALGUARD_TRUTH", str(truth))
    monkeypatch.delenv("TRIALGUARD_DATE", raising=False)
    monkeypatch.delenv("TRIALGUARD_TERMINAL", raising=False)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert errors == []
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"database: {settings.db_path}" in text


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from pipelines.cli import main

    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_analyst_commands_on_the_demo_database(demo, capsys, tmp_path):
    settings, _ = demo
    db = str(settings.db_path)
    rc, out, err = _cli(capsys, "--db", db, "flags", "--date", str(LAST), "--format", "json")
    assert rc == 0, err
    queue = json.loads(out)
    assert queue, "the demo trial should raise flags on its last day"
    top = queue[0]
    rc, out, err = _cli(capsys, "--db", db, "show", top["terminal_id"], "--json")
    assert rc == 0, err
    case = json.loads(out)
    assert top["flag_id"] in [f["flag_id"] for f in case["flags"]]
    assert "card_token" not in out
    assert all(t["card"].count("*") == 6 for t in case["evidence_transactions"])

    rc, out, err = _cli(
        capsys,
        "--db",
        db,
        "review",
        top["flag_id"],
        "--decision",
        "dismissed",
        "--note",
        "demo: known merchant",
        "--analyst",
        "tester",
    )
    assert rc == 0, err
    rc, out, err = _cli(capsys, "--db", db, "flags", "--status", "all", "--format", "csv")
    assert rc == 0, err
    assert any(
        line.startswith(top["flag_id"]) and ",dismissed," in line for line in out.splitlines()
    )

    rc, out, err = _cli(
        capsys,
        "--db",
        db,
        "verdicts",
        "--date",
        str(LAST),
        "--within",
        "120",
        "--ended",
        "30",
        "--format",
        "json",
    )
    assert rc == 0, err
    verdicts = json.loads(out)
    assert verdicts and {v["verdict"] for v in verdicts} <= {"pass", "extend", "terminate"}

    html = tmp_path / "r.html"
    rc, out, err = _cli(capsys, "--db", db, "report", "--date", str(LAST), "--out", str(html))
    assert rc == 0, err
    text = html.read_text(encoding="utf-8")
    assert f'data-flag-id="{queue[1]["flag_id"]}"' in text if len(queue) > 1 else True
    assert f'data-flag-id="{top["flag_id"]}"' not in text  # dismissed: out of the queue
    assert os.path.getsize(html) > 10_000
