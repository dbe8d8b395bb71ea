"""The thresholds file: documented, mergeable, versioned, and independent of the simulator."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from models.config import config_version, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_every_threshold_cites_its_source():
    text = (ROOT / "models" / "thresholds.toml").read_text(encoding="utf-8")
    tables = re.split(r"^\[", text, flags=re.MULTILINE)[1:]
    for table in tables:
        name = table.split("]")[0]
        if name in ("card_compromise", "fraud_hotspot", "pan_exposure"):
            continue  # the leakage engineer's tables
        assert re.search(r"§|\[H\]|\[P\]", table), f"[{name}] gives no source for its values"


def test_candidate_file_overrides_key_by_key(tmp_path):
    cand = tmp_path / "cand.toml"
    cand.write_text("[relocation]\nmax_speed_kmh = 500.0\n", encoding="utf-8")
    cfg = load_config(cand)
    assert cfg["relocation"]["max_speed_kmh"] == 500.0
    assert cfg["relocation"]["min_outside"] == load_config()["relocation"]["min_outside"]
    assert config_version(cfg) != config_version(load_config())


def test_bad_candidate_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[no_such_table]\nx = 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown tables"):
        load_config(bad)


def test_detectors_never_import_pipelines_or_the_simulator():
    for layer in ("features", "models"):
        for path in (ROOT / layer).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for n in names:
                    assert not n.startswith("pipelines"), f"{path} imports {n}"
                    assert "simulate" not in n and "scenario" not in n, f"{path} imports {n}"
