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
