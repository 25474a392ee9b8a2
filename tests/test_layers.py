"""The package's layers, read from its own imports: cli → api → strategies (uniform, auto) → core → passes →
graph / datafit / decompose, with measure beside core; imports only point downward."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "convopt"

# a package (first name under convopt) → what it must never import (convopt packages, or onnxruntime)
FORBIDDEN = {
    "decompose": {"graph", "passes", "measure", "core", "auto", "uniform", "api", "cli", "onnxruntime"},
    "datafit": {"graph", "passes", "measure", "core", "auto", "uniform", "api", "cli", "onnxruntime"},
    "graph": {"passes", "measure", "core", "auto", "uniform", "api", "cli"},
    "passes": {"measure", "core", "auto", "uniform", "api", "cli", "onnxruntime"},
    "measure": {"passes", "core", "auto", "uniform", "api", "cli", "render"},
    "core": {"auto", "uniform", "api", "cli", "render"},
    "auto": {"uniform", "api", "cli", "render"},
    "uniform": {"auto", "api", "cli", "render"},
    "render": {"core", "auto", "uniform", "api", "cli", "measure", "passes", "onnxruntime"},
    "api": {"cli", "render"},
}


def _imports(path: Path) -> set[str]:
    """The convopt packages (first name under convopt) and onnxruntime that a module imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        if isinstance(node, ast.ImportFrom) and node.module == "convopt":  # from convopt import decompose
            names = [f"convopt.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "onnxruntime":
                found.add("onnxruntime")
            elif parts[0] == "convopt" and len(parts) > 1:
                found.add(parts[1])
    return found


def _layer(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    return rel.parts[0]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_point_downward(layer: str) -> None:
    files = [p for p in PKG.rglob("*.py") if _layer(p) == layer]
    assert files, f"no module in layer {layer}"
    bad = {f"{p.relative_to(PKG)} imports {sorted(_imports(p) & FORBIDDEN[layer])}"
           for p in files if _imports(p) & FORBIDDEN[layer]}
    assert not bad, bad


def test_the_rule_sees_a_violation(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text("from convopt.auto.search import AutoSearch\nimport onnxruntime as ort\nfrom convopt import api\n")
    assert _imports(p) == {"auto", "onnxruntime", "api"}
