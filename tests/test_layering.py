"""Imports flow one way: kernels <- features <- models <- pipelines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["kernels", "features", "models", "pipelines"]
IO_LIBS = {"prefect", "duckdb", "great_expectations"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_flow_one_way(layer):
    above = set(LAYERS[LAYERS.index(layer) + 1 :])
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"{layer}/ has no modules"
    for path in files:
        bad = _imports(path) & above
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}, a layer above {layer}"
        if layer != "pipelines":
            io = _imports(path) & IO_LIBS
            assert not io, f"{path.relative_to(ROOT)} imports {sorted(io)}; only pipelines/ may"


# Inside pipelines/: the stages and what each may import besides kernels, features,
# models and the shared top-level modules. The orchestrators (cli, flows, demo) and
# the benchmarks may import any stage; nothing imports them but each other.
SHARED = {"settings", "storage", "runlock", "progress", "version"}
STAGE_MAY_IMPORT = {
    "ingest": set(),
    "detect": set(),
    "simulate": set(),
    "analyst": {"detect"},
    "storage": set(),
    "bench": {"ingest", "detect", "analyst", "simulate"},
}
ORCHESTRATORS = {"cli", "flows", "schedule", "demo", "__main__"}


def _pipelines_imports(path: Path) -> set[str]:
    """The second component of every ``pipelines.X`` this file imports (``from pipelines import X`` too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods = [node.module]
            if node.module == "pipelines":
                out.update(a.name for a in node.names if a.name != "lazy_exports")
        else:
            continue
        for m in mods:
            parts = m.split(".")
            if parts[0] == "pipelines" and len(parts) > 1:
                out.add(parts[1])
    return out


def _owner(path: Path) -> str:
    rel = path.relative_to(ROOT / "pipelines").parts
    return rel[0] if len(rel) > 1 else Path(rel[0]).stem


def test_pipelines_stages_import_only_what_they_may():
    problems = []
    for path in sorted((ROOT / "pipelines").rglob("*.py")):
        owner = _owner(path)
        if owner in ORCHESTRATORS or owner == "__init__":
            continue
        used = _pipelines_imports(path) - {owner}
        if owner in SHARED:
            allowed = SHARED
        else:
            assert owner in STAGE_MAY_IMPORT, f"{path.relative_to(ROOT)}: unknown stage {owner!r}"
            allowed = SHARED | STAGE_MAY_IMPORT[owner]
        bad = used - allowed
        if bad:
            problems.append(f"{path.relative_to(ROOT)} ({owner}) imports pipelines.{sorted(bad)}")
    assert not problems, "imports across stages that do not belong:\n" + "\n".join(problems)


def test_the_stage_rule_catches_a_forbidden_import(tmp_path):
    # the check above must be able to fail: an ingest module importing detect is caught
    bad = tmp_path / "bad.py"
    bad.write_text("from pipelines.detect.run import run_detection\nimport pipelines.analyst\n")
    assert _pipelines_imports(bad) == {"detect", "analyst"}


def test_pipelines_top_level_stays_small():
    top = sorted(p.name for p in (ROOT / "pipelines").glob("*.py"))
    assert len(top) <= 10, f"{len(top)} modules directly under pipelines/ (at most 10): {top}"
    for name in top:
        lines = (ROOT / "pipelines" / name).read_text(encoding="utf-8").count("\n")
        assert lines <= 400, f"pipelines/{name} has {lines} lines; split it (at most 400)"


@pytest.mark.parametrize("layer", LAYERS)
def test_modules_stay_readable(layer):
    for path in sorted((ROOT / layer).rglob("*.py")):
        lines = path.read_text(encoding="utf-8").count("\n")
        assert lines <= 700, (
            f"{path.relative_to(ROOT)} has {lines} lines; split it by responsibility"
        )
