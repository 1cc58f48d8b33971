"""No upward import: the lower layers never import the task registry or a higher layer.

Layers (WORKSPACE.md), top to bottom: scripts -> cli -> experiments / training ->
evaluation / models / interop -> data / decoding / partitioning / model. The task
registry (``tasks/``, installed as ``flan_moe_tasks``) sits above the data layer: the
CLI layer loads it (``flan_moe.cli.task_registry``). Imports are read with ``ast``
(every ``import`` / ``from ... import`` anywhere in a module, also inside functions).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EVERYWHERE_FORBIDDEN = (
    "tasks",
    "flan_moe_tasks",
    "scripts",
    "flan_moe.cli",
    "flan_moe.experiments",
    "flan_moe.service",
)
_ABOVE_THE_BOTTOM = (
    "flan_moe.training",
    "flan_moe.evaluation",
    "flan_moe.models",
    "flan_moe.interop",
    "flan_moe.merging",
    "flan_moe.construction",
    "flan_moe.analysis",
)
# unit (a package folder or a module file under flan_moe/) -> what it must not import
FORBIDDEN = {
    "data": EVERYWHERE_FORBIDDEN + _ABOVE_THE_BOTTOM,
    "model": EVERYWHERE_FORBIDDEN + _ABOVE_THE_BOTTOM + ("flan_moe.data",),
    "partitioning.py": EVERYWHERE_FORBIDDEN + _ABOVE_THE_BOTTOM + ("flan_moe.data",),
    "decoding.py": EVERYWHERE_FORBIDDEN + _ABOVE_THE_BOTTOM + ("flan_moe.data",),
    "evaluation": EVERYWHERE_FORBIDDEN
    + ("flan_moe.training", "flan_moe.merging", "flan_moe.construction"),
    "training": EVERYWHERE_FORBIDDEN,
}


def imported_modules(source: str) -> set[str]:
    """Absolute module names a module's source imports (``from a import b`` gives a, a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(source: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        name
        for name in imported_modules(source)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


def _files(unit: str) -> list[Path]:
    path = ROOT / "flan_moe" / unit
    return [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("unit", sorted(FORBIDDEN))
def test_no_upward_import(unit):
    files = _files(unit)
    assert files, f"flan_moe/{unit} is missing: update FORBIDDEN"
    found = {
        str(f.relative_to(ROOT)): bad
        for f in files
        if (bad := violations(f.read_text(), FORBIDDEN[unit]))
    }
    assert not found, f"upward imports (see tests/test_layering.py for the layers): {found}"


def test_the_checker_sees_imports_inside_functions_and_from_imports():
    source = (
        "import os\n"
        "def f():\n"
        "    import tasks\n"
        "    from flan_moe.cli.task_registry import register_tasks\n"
        "from flan_moe import experiments\n"
        "from . import sibling\n"
    )
    assert violations(source, EVERYWHERE_FORBIDDEN) == [
        "flan_moe.cli.task_registry",
        "flan_moe.cli.task_registry.register_tasks",
        "flan_moe.experiments",
        "tasks",
    ]
    assert violations("import tasksfoo\nimport flan_moe.data\n", EVERYWHERE_FORBIDDEN) == []
