"""The docker sandbox level against a real Docker engine.

Runs where an engine answers on the local socket; skipped elsewhere with the reason. In CI
(``CI`` set) on a machine that has the docker socket, an unreachable engine is a failure.
The first run pulls the default image (``python:X.Y-slim`` for this interpreter).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import httpx
import pytest

from lattice.core.resource.node import SelectedNode
from lattice.executor.base import TaskKind, TaskOutcome, TaskSubmission
from lattice.executor.sandbox import verdict
from lattice.executor.sandbox.docker import DEFAULT_SOCKET, docker_available, docker_socket
from lattice.executor.sandbox.runner import SandboxRunner
from lattice.executor.sandbox.wire import SealedValue
from lattice.vocabulary import SandboxLevel, SandboxSpec, TaskResourceRequirements

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module", autouse=True)
def require_docker() -> None:
    reason = docker_available()
    if reason is None:
        return
    socket_path = os.environ.get("DOCKER_HOST", "").removeprefix("unix://") or DEFAULT_SOCKET
    if os.environ.get("CI") and os.path.exists(socket_path):
        pytest.fail(f"CI has a docker socket but no working engine: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def runner() -> Iterator[SandboxRunner]:
    runner = SandboxRunner(SandboxSpec(level=SandboxLevel.DOCKER, memory_limit_mb=256))
    yield runner
    runner.close()


def submit(
    runner: SandboxRunner, fn: Callable[..., Any], key: str = "k", **inputs: Any
) -> TaskOutcome:
    return runner.run(
        TaskSubmission(
            task_key=key,
            task_name="t",
            kind=TaskKind.CODE,
            code=cloudpickle.dumps(fn),
            requirements=TaskResourceRequirements(cpu=1),
            node=SelectedNode("local", "127.0.0.1"),
            outputs=("out",),
            user_inputs=inputs or {"x": 1},
            upstream_inputs={},
        )
    )


def test_a_task_runs_in_a_container(runner: SandboxRunner) -> None:
    outcome = submit(runner, lambda p: {"out": p["x"] + 1, "pair": (1, 2)}, x=41)
    assert outcome.ok, outcome.error
    assert outcome.value["out"] == 42
    assert isinstance(outcome.value["pair"], SealedValue) and outcome.value["pair"].open() == (1, 2)


def test_an_exception_keeps_its_type_and_message(runner: SandboxRunner) -> None:
    def fail(p: dict[str, Any]) -> None:
        raise KeyError("missing thing")

    outcome = submit(runner, fail)
    assert outcome.error is not None
    assert outcome.error.type == "KeyError" and "missing thing" in outcome.error.message


def test_the_container_is_isolated(runner: SandboxRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATTICE_TEST_SECRET", "s3cr3t")

    def probe(p: dict[str, Any]) -> dict[str, Any]:
        import socket

        results: dict[str, Any] = {
            "secret": os.environ.get("LATTICE_TEST_SECRET"),
            "uid": os.getuid(),
        }
        for name, attempt in {
            "network": lambda: socket.create_connection(("1.1.1.1", 53), timeout=3),
            "root_fs": lambda: Path("/etc/lattice-probe").write_text("x"),
        }.items():
            try:
                attempt()
                results[name] = "allowed"
            except OSError as exc:
                results[name] = type(exc).__name__
        return {"out": results}

    outcome = submit(runner, probe)
    assert outcome.ok, outcome.error
    found = outcome.value["out"]
    assert found["secret"] is None
    assert found["uid"] != 0
    assert found["network"] != "allowed" and found["root_fs"] != "allowed"


def test_the_memory_limit_is_reported(runner: SandboxRunner) -> None:
    def hog(p: dict[str, Any]) -> int:
        return len(b"x" * (1024**3))

    outcome = submit(runner, hog)
    assert outcome.error is not None
    assert outcome.error.type == verdict.MEMORY_LIMIT


def test_cancel_kills_the_container(runner: SandboxRunner) -> None:
    outcomes: list[TaskOutcome] = []

    def forever(p: dict[str, Any]) -> None:
        threading.Event().wait()

    # The engine's event stream says when the task's container has started: no polling.
    filters = json.dumps({"label": ["lattice.task=cancel-me"], "event": ["start"]})
    transport = httpx.HTTPTransport(uds=str(docker_socket()))
    with (
        httpx.Client(transport=transport, base_url="http://docker", timeout=None) as client,
        client.stream("GET", "/events", params={"filters": filters}) as events,
    ):
        worker = threading.Thread(
            target=lambda: outcomes.append(submit(runner, forever, key="cancel-me")),
            daemon=True,  # a failed assertion below must not hang the session
        )
        worker.start()
        next(events.iter_lines())
    assert runner.cancel("cancel-me")
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert outcomes[0].error is not None and outcomes[0].error.type == "TaskCancelledError"
