"""Imports run one way: splitcore, then measuring (profiling), then deciding (partitioner), then the services,
then the command line, then its tooling. Checked on the source, lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"splitcore": 0, "profiling": 1, "partitioner": 2, "cloud_service": 3, "edge_service": 3, "edgesplit": 4,
          "edgesplit.tools": 5}


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to; None for anything not ours."""
    if module == "edgesplit.tools" or module.startswith("edgesplit.tools."):
        return "edgesplit.tools"
    top = module.split(".")[0]
    return top if top in LAYERS else None


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from edgesplit import tools`
    return found


def violations(root: Path = ROOT) -> list[str]:
    """Each import from a lower layer of a higher one, or between the two services."""
    wrong = []
    for package in ("splitcore", "profiling", "partitioner", "cloud_service", "edge_service", "edgesplit"):
        for path in sorted((root / package).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            own = layer_of(module)
            assert own is not None
            for imported in imports_of(path):
                other = layer_of(imported)
                if other is None or other == own:
                    continue
                if LAYERS[other] >= LAYERS[own]:
                    wrong.append(f"{module} imports {imported} ({own} may not import {other})")
    return sorted(set(wrong))


def test_imports_run_one_way() -> None:
    assert violations() == []


def test_the_check_sees_wrong_way_imports_even_inside_functions(tmp_path: Path) -> None:
    for package, source in {"partitioner": "def f():\n    from edge_service.orchestrator import Orchestrator\n",
                            "splitcore": "import profiling.profile\n",
                            "edge_service": "from cloud_service import engine\n",
                            "edgesplit": "from edgesplit.tools import linkemu\n"}.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "x.py").write_text(source)
    assert [v.split(" (")[0] for v in violations(tmp_path)] == [
        "edge_service.x imports cloud_service", "edge_service.x imports cloud_service.engine",
        "edgesplit.x imports edgesplit.tools", "edgesplit.x imports edgesplit.tools.linkemu",
        "partitioner.x imports edge_service.orchestrator",
        "partitioner.x imports edge_service.orchestrator.Orchestrator",
        "splitcore.x imports profiling.profile"]
