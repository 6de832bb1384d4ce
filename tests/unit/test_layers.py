"""The layers go one way (DESIGN.md, Layers): checked by parsing the package, not by running it.

- nothing outside ``api/`` imports the web framework;
- ``client/`` imports only itself, the task vocabulary, the exceptions and the wire encoding;
- ``core/`` imports neither Ray nor the API; Ray is imported only in ``executor/ray/``;
- ``executor/`` imports neither the orchestrator nor the API;
- no route touches a ``Workflow``: every change to a workflow or run goes through the
  orchestrator.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lattice

PACKAGE = Path(lattice.__file__).parent


def modules() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(PACKAGE.parent)): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def imported(tree: ast.Module) -> set[str]:
    """Every module name a file imports, at any depth (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def under(path: str, *folders: str) -> bool:
    return any(path.startswith(f"lattice/{folder}/") for folder in folders)


def offenders(rule: object) -> list[str]:
    assert callable(rule)
    return sorted(
        f"{path}: {name}"
        for path, tree in modules().items()
        for name in imported(tree)
        if rule(path, name)
    )


def top(name: str) -> str:
    return name.split(".")[0]


def test_the_package_is_found_and_parsed() -> None:
    found = modules()
    assert "lattice/core/scheduler/core.py" in found and len(found) > 50


def test_only_the_api_imports_the_web_framework() -> None:
    assert (
        offenders(
            lambda path, name: top(name) in ("fastapi", "starlette") and not under(path, "api")
        )
        == []
    )


def test_the_client_sdk_imports_only_its_vocabulary() -> None:
    allowed = (
        "lattice.client",
        "lattice.context",
        "lattice.vocabulary",
        "lattice.exceptions",
        "lattice.serialization",
    )
    assert (
        offenders(
            lambda path, name: (
                under(path, "client") and top(name) == "lattice" and not name.startswith(allowed)
            )
        )
        == []
    )


def test_ray_is_imported_only_in_the_ray_executor() -> None:
    assert (
        offenders(
            lambda path, name: (
                top(name) == "ray"
                and not under(path, "executor/ray")
                and path != "lattice/executor/ray_executor.py"
            )
        )
        == []
    )


def test_the_core_imports_neither_the_api_nor_ray() -> None:
    assert (
        offenders(
            lambda path, name: (
                under(path, "core") and (name.startswith("lattice.api") or top(name) == "ray")
            )
        )
        == []
    )


def test_executors_import_neither_the_orchestrator_nor_the_api() -> None:
    assert (
        offenders(
            lambda path, name: (
                under(path, "executor")
                and name.startswith(("lattice.core.orchestrator", "lattice.api"))
            )
        )
        == []
    )


ROUTES = sorted((PACKAGE / "api" / "routes").glob("*.py"))


@pytest.mark.parametrize("route", ROUTES, ids=lambda p: p.name)
def test_no_route_touches_a_workflow(route: Path) -> None:
    tree = ast.parse(route.read_text())
    names = imported(tree)
    assert not any(n.endswith(".Workflow") for n in names), "routes get no Workflow objects"
    calls = [
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    ]
    assert "get_workflow" not in calls, "routes call the orchestrator, not a Workflow"
