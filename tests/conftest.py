"""Fixtures shared by the whole suite. Each one that starts a service also stops it."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from lattice.executor.ray.executor import RayExecutor


def in_ci() -> bool:
    """Whether this is CI (``CI`` set, e.g. ``CI=true``): there the test command has
    installed every dependency, so a missing one is a failure, not a reason to skip."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """Skip the calling test with ``reason``; in CI, fail it."""
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def require_module(module: str, what: str) -> None:
    """Skip the calling test when ``module`` is not installed; in CI (``CI`` set), fail it."""
    if importlib.util.find_spec(module) is not None:
        return
    skip_or_fail(f"{what} needs the {module!r} package, which is not installed")


def import_or_fail(module: str, what: str) -> ModuleType:
    """``module``, imported at a test module's top; without it the whole test module is
    skipped, or in CI fails (what a bare ``pytest.importorskip`` would skip silently)."""
    if importlib.util.find_spec(module) is None:
        reason = f"{what} need the {module!r} package, which is not installed"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return importlib.import_module(module)


def unless_available(reason: str | None) -> list[pytest.MarkDecorator]:
    """Marks for a test that needs something the test command installs (libseccomp, ...):
    skipped with ``reason`` when it is missing, except in CI, where the test runs (and fails
    saying what is missing)."""
    if reason is None or in_ci():
        return []
    return [pytest.mark.skip(reason=reason)]


@pytest.fixture(scope="session")
def ray_executor() -> Iterator[RayExecutor]:
    """One private local Ray (4 CPUs) for the whole session, started on first use.

    Shared: tests may build a Scheduler on top of it, submit and cancel tasks, but must not
    shut it down. Starting Ray takes several seconds, hence once per session.
    """
    require_module("ray", "the Ray executor")
    from lattice.executor.ray.executor import RayExecutor

    executor = RayExecutor(num_cpus=4)
    executor.initialize()
    try:
        yield executor
    finally:
        executor.shutdown()
