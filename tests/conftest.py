"""Fixtures shared by the whole suite. Each one that starts a service also stops it."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from lattice.executor.ray.executor import RayExecutor


def require_module(module: str, what: str) -> None:
    """Skip the calling test when ``module`` is not installed; in CI (``CI`` set), fail it."""
    if importlib.util.find_spec(module) is not None:
        return
    reason = f"{what} needs the {module!r} package, which is not installed"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


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
