"""Lattice across three hosts that are really separate: a head and two workers, each in its
own network namespace with its own address (tests/multihost/cluster.py).

The tests share the cluster and run in file order: the 10 000-task DAG, then a worker killed
mid-run (the ``cpu`` worker, for good), then a worker that joins mid-run. Without root they
are skipped, saying why; in CI (``CI`` set), which runs as root, a machine that has root but
cannot make the namespaces fails them instead.

Nothing sleeps to wait: the tests follow the run's event stream, the workers' output and
tasks that wait at a door until the test opens it.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from lattice import task
from tests.integration.test_distributed import finished, starts
from tests.multihost import netns
from tests.multihost.cluster import WAIT, ThreeHosts, build_dag, measure, ray_node_id, three_hosts

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThreeHosts]:
    from tests.conftest import require_module

    require_module("ray", "a cluster of Ray nodes")
    reason = netns.unavailable()
    if reason is not None:
        if os.geteuid() == 0 and os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with three_hosts() as hosts:
        yield hosts


# --- tasks (this module travels by value) ----------------------------------------------------


@task(inputs=["x"], outputs=["y", "node"], resources={"cpu": 0.5})
def brief(params: dict[str, Any]) -> dict[str, Any]:
    import time

    time.sleep(0.02)  # a little work, so that a worker has some running when it is killed
    return {"y": params["x"] * 2, "node": ray_node_id()}


@task(inputs=[f"p{i}" for i in range(50)], outputs=["s"], resources={"cpu": 0.1})
def total_of_50(params: dict[str, Any]) -> dict[str, Any]:
    return {"s": sum(params.values())}


@task(inputs=["door", "host", "i"], outputs=["node", "i"])
def behind_door(params: dict[str, Any]) -> dict[str, Any]:
    with socket.create_connection((params["host"], params["door"]), timeout=300) as conn:
        conn.settimeout(300)
        assert conn.recv(2) == b"go"
    return {"node": ray_node_id(), "i": params["i"]}


class Door:
    """A socket on the test's own address on the network that tasks wait at."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._sock = socket.create_server((host, 0), backlog=64)
        self._sock.settimeout(WAIT)
        self.port = int(self._sock.getsockname()[1])
        self.held: list[socket.socket] = []

    def hold(self, count: int) -> None:
        """Block until ``count`` more tasks wait here."""
        for _ in range(count):
            self.held.append(self._sock.accept()[0])

    def open(self) -> None:
        for conn in self.held:
            with conn:
                conn.sendall(b"go")
        self.held = []

    def close(self) -> None:
        self.open()
        self._sock.close()


# --- the tests -------------------------------------------------------------------------------


def test_a_10000_task_dag_of_mixed_requests_lands_where_each_task_fits(
    cluster: ThreeHosts,
) -> None:
    dag = build_dag(cluster.api())
    got = measure(cluster, dag)
    gpu, cpu = cluster.workers["g"].node_id, cluster.workers["c"].node_id
    head_node = next(n for n in cluster.api().nodes() if n["node_id"] not in (gpu, cpu))

    results = finished(got["messages"])  # also: no task finished twice
    print(
        f"three hosts: {got['tasks']} tasks in {got['seconds']:.2f}s = {got['tasks_per_s']:.0f} "
        f"tasks/s; head server CPU {got['server_cpu_ms_per_task']:.3f} ms/task, GCS "
        f"{got['gcs_cpu_ms_per_task']:.3f} ms/task"
    )
    assert got["messages"][-1]["data"]["success"] is True
    assert len(results) == dag.size == 10_000
    assert results[dag.final.task_id] == {"s": dag.expected_total}
    by_kind: dict[str, Counter[str]] = {}
    for task_id, kind in dag.kinds.items():
        by_kind.setdefault(kind, Counter())[results[task_id]["node"]] += 1
    # Only the GPU worker declared a GPU; only the workers have two CPUs.
    assert set(by_kind["gpu"]) == {gpu}
    assert {results[t]["cuda"] for t, k in dag.kinds.items() if k == "gpu"} == {"0"}
    assert set(by_kind["cpu2"]) <= {gpu, cpu} and sum(by_kind["cpu2"].values()) == 16
    # The rest fits anywhere: every host takes its part.
    assert set(by_kind["light"]) == {gpu, cpu, head_node["node_id"]}, by_kind["light"]
    assert head_node["node_ip"] == cluster.head_host.address


def test_a_worker_killed_mid_run_loses_nothing_and_doubles_nothing(cluster: ThreeHosts) -> None:
    victim = cluster.workers["c"]
    wf = cluster.api().create_workflow()
    leaves = [wf.add_task(brief, inputs={"x": i}) for i in range(2000)]
    sums = [
        wf.add_task(total_of_50, inputs={f"p{k}": t.outputs["y"] for k, t in enumerate(group)})
        for group in (leaves[i : i + 50] for i in range(0, len(leaves), 50))
    ]
    run_id = wf.run()
    messages: list[dict[str, Any]] = []
    started_on_victim = 0
    killed = False
    for message in wf.stream(run_id, timeout=WAIT * 2):
        messages.append(message)
        data = message["data"]
        if message["type"] == "start_task" and data.get("node_id") == victim.node_id:
            started_on_victim += 1
        if not killed and started_on_victim >= 20:
            victim.kill()  # its process group: the worker and its Ray node, at once
            killed = True

    results = finished(messages)  # no task finished twice
    assert killed, "the victim never ran 20 tasks"
    assert messages[-1]["type"] == "finish_workflow" and messages[-1]["data"]["success"] is True
    assert [results[t.task_id]["y"] for t in leaves] == [2 * i for i in range(2000)]
    assert [results[s.task_id]["s"] for s in sums] == [
        sum(2 * i for i in range(k, k + 50)) for k in range(0, 2000, 50)
    ]
    # Tasks were running there when it died: the head ran them again elsewhere.
    assert f"lost with its node {victim.node_id}; dispatching again" in cluster.head.output
    assert cluster.node_states()[victim.node_id] == "dead"


def test_a_worker_that_joins_mid_run_takes_work(cluster: ThreeHosts) -> None:
    alive = [n for n in cluster.api().nodes() if n["state"] == "alive"]
    slots = int(sum(n["total"]["cpu"] for n in alive))  # one-CPU tasks that run at once now
    door = Door(cluster.net.root_address)
    try:
        wf = cluster.api().create_workflow()
        tasks = [
            wf.add_task(behind_door, inputs={"door": door.port, "host": door.host, "i": i})
            for i in range(slots + 2)
        ]
        run_id = wf.run()
        door.hold(slots)  # the cluster is full; two tasks wait for room
        joiner = cluster.start_worker("j", "--num-cpus", "2")
        joiner.wait_ready(WAIT)
        door.hold(2)  # the two that waited: on the new worker, the only one with room
        door.open()
        messages = wf.get_results(run_id, verbose=False, timeout=WAIT)
    finally:
        door.close()

    results = finished(messages)
    assert messages[-1]["data"]["success"] is True
    assert sorted(results[t.task_id]["i"] for t in tasks) == list(range(slots + 2))
    on_joiner = [t for t in tasks if results[t.task_id]["node"] == joiner.node_id]
    assert len(on_joiner) == 2
    for t in on_joiner:
        assert [s["node_id"] for s in starts(messages, t.task_id)] == [joiner.node_id]
