"""Durable runs: a real head killed by SIGKILL and started again on the same data directory.

Tasks write a side-effect file (one line per execution) so the tests prove what ran, and
wait at a :class:`Listener` where the test wants the head killed.
"""

from __future__ import annotations

import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from lattice import LatticeClient, task
from tests.integration.server_fixture import HeadProcess, free_port, start_local_head
from tests.integration.submissions import TIMEOUT
from tests.integration.waiting_tasks import Listener

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _record(directory: str, name: str) -> None:
    with open(Path(directory) / f"{name}.ran", "a") as f:
        f.write("ran\n")


@task(inputs=["dir", "x"], outputs=["y"], resources={"cpu": 0.5})
def first(params: dict[str, Any]) -> dict[str, Any]:
    _record(params["dir"], "first")
    return {"y": [params["x"], params["x"] + 1]}


@task(inputs=["dir", "port", "y"], outputs=["y"], resources={"cpu": 0.5})
def held(params: dict[str, Any]) -> dict[str, Any]:
    """Runs until the test lets it go (or the head dies under it)."""
    import socket

    _record(params["dir"], "held")
    with socket.create_connection(("127.0.0.1", params["port"])) as conn:
        conn.sendall(b"held\n")
        conn.recv(1)
    return {"y": sum(params["y"])}


@task(inputs=["dir", "y"], outputs=["y"], resources={"cpu": 0.5})
def last(params: dict[str, Any]) -> dict[str, Any]:
    _record(params["dir"], "last")
    return {"y": params["y"] * 10}


def ran(directory: Path) -> dict[str, int]:
    return {p.stem: len(p.read_text().splitlines()) for p in directory.glob("*.ran")}


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    try:
        yield lst
    finally:
        lst.close()


def kill(head: HeadProcess) -> None:
    head.stop(signal.SIGKILL, timeout=TIMEOUT)


def events_of(client: LatticeClient, workflow_id: str, run_id: str) -> list[dict[str, Any]]:
    return list(client.get_workflow(workflow_id).stream(run_id, timeout=TIMEOUT))


def test_a_run_killed_mid_task_resumes_on_restart_and_finished_tasks_never_run_again(
    tmp_path: Path, listener: Listener
) -> None:
    data, effects = tmp_path / "data", tmp_path / "effects"
    effects.mkdir()
    port = free_port()
    head = start_local_head(data_dir=data, port=port)
    try:
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            wf = client.create_workflow()
            a = wf.add_task(first, inputs={"dir": str(effects), "x": 2})
            b = wf.add_task(
                held, inputs={"dir": str(effects), "port": listener.port, "y": a.outputs["y"]}
            )
            c = wf.add_task(last, inputs={"dir": str(effects), "y": b.outputs["y"]})
            run_id = wf.run()
            assert listener.accept(1) == ["held"]  # a finished, b runs now
    finally:
        kill(head)
    assert ran(effects) == {"first": 1, "held": 1}
    listener.waiting.clear()  # that connection died with the head

    head = start_local_head(data_dir=data, port=port)
    try:
        assert listener.accept(1) == ["held"]  # b again, at once, without being asked
        listener.release_all()
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            outputs = client.get_workflow(wf.workflow_id).get_outputs(run_id, timeout=TIMEOUT)
            assert outputs[c.task_id]["y"] == 50
            messages = events_of(client, wf.workflow_id, run_id)
    finally:
        head.stop()
    # a's recorded output fed b after the restart; a never ran again.
    assert ran(effects) == {"first": 1, "held": 2, "last": 1}
    finishes = Counter(m["data"]["task_id"] for m in messages if m["type"] == "finish_task")
    assert finishes == {a.task_id: 1, b.task_id: 1, c.task_id: 1}
    starts = [m["data"] for m in messages if m["type"] == "start_task"]
    assert [s.get("attempt", 1) for s in starts if s["task_id"] == b.task_id] == [1, 2]
    assert [m["seq"] for m in messages] == list(range(len(messages)))
    assert messages[-1]["type"] == "finish_workflow" and messages[-1]["data"]["success"]


def test_a_run_accepted_but_not_yet_dispatched_runs_after_a_restart(
    tmp_path: Path, listener: Listener
) -> None:
    """One CPU: the first run holds it, the second is accepted and queued when the head dies."""
    data, effects = tmp_path / "data", tmp_path / "effects"
    effects.mkdir()
    port = free_port()
    head = start_local_head("--num-cpus", "0.5", data_dir=data, port=port)
    try:
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            busy = client.create_workflow()
            busy.add_task(held, inputs={"dir": str(effects), "port": listener.port, "y": [1]})
            busy_run = busy.run()
            listener.accept(1)
            queued = client.create_workflow()
            q = queued.add_task(first, inputs={"dir": str(effects), "x": 5})
            queued_run = queued.run()
    finally:
        kill(head)
    assert ran(effects) == {"held": 1}
    listener.waiting.clear()

    head = start_local_head("--num-cpus", "0.5", data_dir=data, port=port)
    try:
        listener.accept(1)
        listener.release_all()
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            done = client.get_workflow(queued.workflow_id).get_outputs(queued_run, TIMEOUT)
            assert done[q.task_id]["y"] == [5, 6]
            client.get_workflow(busy.workflow_id).get_outputs(busy_run, TIMEOUT)
    finally:
        head.stop()
    assert ran(effects) == {"held": 2, "first": 1}


def test_a_head_on_a_memory_store_forgets_everything_as_before(tmp_path: Path) -> None:
    port = free_port()
    head = start_local_head("--store", "memory", data_dir=tmp_path, port=port)
    try:
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            client.create_workflow()
    finally:
        head.stop()
    assert "store memory" in head.output
    assert not list(tmp_path.iterdir())


def test_the_banner_names_the_store_in_the_data_directory(tmp_path: Path) -> None:
    head = start_local_head(data_dir=tmp_path)
    head.stop()
    assert f"store sqlite:///{tmp_path}/lattice.db" in head.output
    assert (tmp_path / "lattice.db").exists()
