"""Fractional CPU shares on Ray's task hosts: where tasks land, and what they see at start.

A task of less than one CPU runs on a thread of a shared host that holds at most one CPU's
worth of tasks at once (lattice/executor/ray/hosts.py); that 32 light tasks still overlap, on
two hosts, is in test_ray_fast_paths.py. These tests check placement (which
process each task ran in, with every task held running at once), never speed: the speed goals
are in benchmarks/. Tasks wait at a door, never on a sleep.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from lattice.executor.base import TaskHandle
from lattice.executor.ray.hosts import HostKind
from tests.circular_imports import a as circular_a
from tests.circular_imports import b as circular_b
from tests.circular_imports import c as circular_c
from tests.integration.submissions import TIMEOUT, make_submission

pytest.importorskip("ray", reason='these tests need Ray: pip install "ray[default]"')
from lattice.executor.ray.executor import RayExecutor

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


class Door:
    """A loopback socket tasks block on until the test has seen all of them there."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._sock.settimeout(TIMEOUT)
        self.port = int(self._sock.getsockname()[1])

    def hold(self, count: int) -> list[socket.socket]:
        """Wait until ``count`` tasks are at the door at once; they stay there."""
        return [self._sock.accept()[0] for _ in range(count)]

    @staticmethod
    def open(held: list[socket.socket]) -> None:
        for conn in held:
            with conn:
                conn.sendall(b"go")

    def close(self) -> None:
        self._sock.close()


def pid_behind_door(params: dict[str, Any]) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", params["door"]), timeout=120) as conn:
        conn.settimeout(120)
        assert conn.recv(2) == b"go"
    return {"out": os.getpid()}


def pids_of_tasks_held_together(executor: RayExecutor, cpu: float, count: int) -> list[int]:
    """Run ``count`` tasks of ``cpu`` each, all at the door at once; their processes' pids."""
    door = Door()
    try:
        handles = [
            executor.submit(
                make_submission(pid_behind_door, cpu=cpu, user_inputs={"door": door.port})
            )
            for _ in range(count)
        ]
        held = door.hold(count)
        Door.open(held)
        outcomes = [h.result(TIMEOUT) for h in handles]
    finally:
        door.close()
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    return [int(o.value["out"]) for o in outcomes]


def test_half_cpu_tasks_run_two_to_a_process_not_all_in_one(ray_executor: RayExecutor) -> None:
    pids = pids_of_tasks_held_together(ray_executor, cpu=0.5, count=4)

    # Two CPUs' worth over two processes: no process runs more than one CPU's worth.
    assert sorted(Counter(pids).values()) == [2, 2], pids
    assert os.getpid() not in pids


def test_tenth_cpu_tasks_fill_one_host_exactly(ray_executor: RayExecutor) -> None:
    pids = pids_of_tasks_held_together(ray_executor, cpu=0.1, count=10)

    assert len(set(pids)) == 1, pids  # 10 x 0.1 is one CPU, float sums notwithstanding


def test_shared_hosts_count_only_the_tasks_running_now(ray_executor: RayExecutor) -> None:
    first = pids_of_tasks_held_together(ray_executor, cpu=0.5, count=2)
    again = pids_of_tasks_held_together(ray_executor, cpu=0.5, count=2)

    # The first pair has ended: its host has room again and is reused, not replaced.
    assert len(set(first)) == 1 and set(again) == set(first)
    hosts = [h for h in ray_executor.task_hosts() if h.kind is HostKind.SHARED]
    assert all(h.load == 0 for h in hosts), [h.load for h in hosts]


# --- a package with circular imports, imported by many threads of a fresh host ---------------

CIRCULAR = (circular_a.from_a, circular_b.from_b, circular_c.from_c)
#: tasks started together on one host (24 x 0.04 CPU fit one host) and fresh hosts tried
TOGETHER, REPETITIONS = 24, 6


def by_reference(fn: Any) -> bytes:
    """The function pickled by reference (module and name), as cloudpickle pickles a function
    of an installed package: loading it imports its module."""
    return pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)


def test_tasks_starting_together_on_a_fresh_host_never_see_a_half_imported_module(
    ray_executor: RayExecutor,
) -> None:
    expected = [fn({"x": 1}) for fn in CIRCULAR]
    for _ in range(REPETITIONS):
        # A fresh host: a process that has not imported the package yet.
        ray_executor.release_node("local")
        handles: list[TaskHandle] = []
        for i in range(TOGETHER):
            fn = CIRCULAR[i % len(CIRCULAR)]
            sub = make_submission(fn, cpu=0.04, user_inputs={"x": 1})
            sub = replace(sub, code=by_reference(fn), code_id=f"circular-{fn.__name__}")
            handles.append(ray_executor.submit(sub))
        outcomes = [h.result(TIMEOUT) for h in handles]
        failures = [f"{o.error.type}: {o.error.message}" for o in outcomes if o.error]
        assert not failures, failures
        assert [o.value for o in outcomes] == [
            {"out": expected[i % len(CIRCULAR)]} for i in range(TOGETHER)
        ]
