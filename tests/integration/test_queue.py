"""The queue: named priorities through the SDK and raw JSON, and what `/queue/*` says waits, on a
head with one CPU slot."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from lattice import LatticeClient, LatticeInputError, task
from lattice.client.core.decorator import TaskFunction
from lattice.config.settings import ServerSettings
from tests.integration.raw_api import code_ser
from tests.integration.server_fixture import Gate, InProcessServer

LEVELS = ["idle", "low", "normal", "high", "critical"]


def pass_gate(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.settimeout(30)
        if conn.recv(2) != b"go":
            raise RuntimeError("the gate was closed")


@task(inputs=["gate"], outputs=["y"], resources={"cpu": 1})
def hold(params: dict[str, int]) -> int:
    pass_gate(params["gate"])
    return 0


def level_task(level: str) -> TaskFunction:
    def work(params: dict[str, str]) -> str:
        return params["x"]

    work.__name__ = f"work_{level}"
    return task(inputs=["x"], outputs=["y"], resources={"cpu": 1}, priority=level)(work)


@pytest.fixture(scope="module")
def one_slot() -> Iterator[InProcessServer]:
    with InProcessServer(ServerSettings(executor="local", num_cpus=1)) as server:
        yield server


def start_order(messages: list[dict]) -> list[str]:
    return [m["data"]["task_name"] for m in messages if m["type"] == "start_task"]


@pytest.mark.parametrize("declared", ["by @task", "by add_task"])
def test_queued_tasks_of_all_five_levels_start_in_priority_order(
    one_slot: InProcessServer, gate: Gate, declared: str
) -> None:
    with LatticeClient(one_slot.url) as client:
        busy = client.create_workflow()
        busy.add_task(hold, inputs={"gate": gate.port})
        busy_run = busy.run()

        wf = client.create_workflow()
        for level in LEVELS:  # added lowest first
            if declared == "by @task":
                wf.add_task(level_task(level), inputs={"x": level})
            else:
                wf.add_task(step, inputs={"x": 1}, task_name=f"work_{level}", priority=level)
        run_id = wf.run()
        gate.open()

        assert busy.get_outputs(busy_run)
        messages = wf.get_results(run_id)
    assert start_order(messages) == [f"work_{lv}" for lv in reversed(LEVELS)]


@task(inputs=["x"], outputs=["at"], resources={"cpu": 1})
def started_at(params: dict[str, str]) -> float:
    return time.monotonic()  # the head is this process: one clock for every task


def test_a_run_priority_is_the_default_of_its_tasks(one_slot: InProcessServer, gate: Gate) -> None:
    with LatticeClient(one_slot.url) as client:
        busy = client.create_workflow()
        busy.add_task(hold, inputs={"gate": gate.port})
        busy_run = busy.run()
        later, urgent = client.create_workflow(), client.create_workflow()
        t_later = later.add_task(started_at, inputs={"x": "later"})
        t_urgent = urgent.add_task(started_at, inputs={"x": "urgent"})
        later_run = later.run()  # normal, and queued first
        urgent_run = urgent.run(priority="high")
        gate.open()
        busy.get_outputs(busy_run)
        at_later = later.get_outputs(later_run)[t_later]["at"]
        at_urgent = urgent.get_outputs(urgent_run)[t_urgent]["at"]
    assert at_urgent < at_later


def test_priorities_are_taken_by_name_or_number_in_raw_json_and_bad_ones_refused(
    one_slot: InProcessServer,
) -> None:
    with httpx.Client(base_url=one_slot.url) as http:
        wf = http.post("/create_workflow").json()["workflow_id"]
        bad = http.post("/run_workflow", json={"workflow_id": wf, "priority": "urgent"})
        assert bad.status_code == 400
        assert "priority must be a level from 0 to 4 or its name" in bad.text
        assert http.post("/run_workflow", json={"workflow_id": wf, "priority": "HIGH"}).is_success
        assert http.post("/run_workflow", json={"workflow_id": wf, "priority": 4}).is_success
        node = {"workflow_id": wf, "task_name": "node", "code_ser": code_ser(started_at.func)}
        ok = http.post("/add_langgraph_task", json={**node, "priority": "low"})
        assert ok.is_success
        refused = http.post("/add_langgraph_task", json={**node, "priority": 9})
        assert refused.status_code == 400 and "priority" in refused.text
        names = [t["task_name"] for t in http.get(f"/get_workflow_tasks/{wf}").json()["tasks"]]
        assert names == ["node"]  # the refused one changed nothing
    with pytest.raises(LatticeInputError, match="priority"):
        task(inputs=["x"], outputs=["y"], priority="soon")


@task(inputs=["x"], outputs=["y"], resources={"cpu": 1})
def step(params: dict[str, int]) -> int:
    return params["x"] + 1


def test_the_queue_says_what_waits_and_why(one_slot: InProcessServer, gate: Gate) -> None:
    with LatticeClient(one_slot.url) as client, httpx.Client(base_url=one_slot.url) as http:
        busy = client.create_workflow()
        held = busy.add_task(hold, inputs={"gate": gate.port})
        busy_run = busy.run()
        wf = client.create_workflow()
        first = wf.add_task(step, inputs={"x": 1})
        second = wf.add_task(step, inputs={"x": first.outputs["y"]})
        run_id = wf.run()
        try:
            status = http.get("/queue/status").json()
            details = http.get("/queue/details").json()["tasks"]
            mine = http.get("/queue/details", params={"run_id": run_id}).json()["tasks"]
        finally:
            gate.open()
        busy.get_outputs(busy_run)
        wf.get_outputs(run_id)
        after = http.get("/queue/status").json()

    assert status["total"] == 3
    assert status["by_state"] == {
        "waiting_for_inputs": 1,
        "waiting_for_resources": 1,
        "in_batch": 0,
        "running": 1,
    }
    assert status["by_priority"]["normal"] == 3 and status["by_priority"]["idle"] == 0
    by_id = {t["task_id"]: t for t in details}
    assert by_id[held.task_id]["state"] == "running" and by_id[held.task_id]["reason"] is None
    queued = by_id[first.task_id]
    assert queued["state"] == "waiting_for_resources"
    assert queued["priority_name"] == "normal" and queued["requested"]["cpu"] == 1
    assert "0 of cpu=1 free" in queued["reason"]
    assert by_id[second.task_id]["state"] == "waiting_for_inputs"
    assert first.task_id in by_id[second.task_id]["reason"]
    assert {t["task_id"] for t in mine} == {first.task_id, second.task_id}
    assert after["total"] == 0


def test_a_priority_change_moves_a_queued_task_ahead(one_slot: InProcessServer, gate: Gate) -> None:
    with LatticeClient(one_slot.url) as client, httpx.Client(base_url=one_slot.url) as http:
        busy = client.create_workflow()
        held = busy.add_task(hold, inputs={"gate": gate.port})
        busy_run = busy.run()
        wf = client.create_workflow()
        first = wf.add_task(started_at, inputs={"x": "first"})
        second = wf.add_task(started_at, inputs={"x": "second"})
        run_id = wf.run()
        try:
            moved = http.put(
                f"/queue/tasks/{second.task_id}/priority", json={"priority": "critical"}
            )
            bad = http.put(f"/queue/tasks/{second.task_id}/priority", json={"priority": "soon"})
            unknown = http.put("/queue/tasks/nope/priority", json={"priority": 1})
            running = http.put(f"/queue/tasks/{held.task_id}/priority", json={"priority": 1})
        finally:
            gate.open()
        busy.get_outputs(busy_run)
        outputs = wf.get_outputs(run_id)
        messages = wf.get_results(run_id)

    assert moved.status_code == 200 and moved.json()["priority"] == 0
    assert moved.json()["run_id"] == run_id
    assert bad.status_code == 400 and unknown.status_code == 404
    assert running.status_code == 409 and "running already" in running.text
    assert outputs[second]["at"] < outputs[first]["at"]
    (change,) = [m for m in messages if m["type"] == "task_priority_changed"]
    assert change["data"] == {
        "workflow_id": wf.workflow_id,
        "task_id": second.task_id,
        "priority": 0,
        "previous": 2,
    }


def test_deleting_a_queued_task_cancels_it_alone_and_skips_its_dependants(
    one_slot: InProcessServer, gate: Gate
) -> None:
    with LatticeClient(one_slot.url) as client, httpx.Client(base_url=one_slot.url) as http:
        busy = client.create_workflow()
        busy.add_task(hold, inputs={"gate": gate.port})
        busy_run = busy.run()
        wf = client.create_workflow()
        doomed = wf.add_task(step, inputs={"x": 1})
        after = wf.add_task(step, inputs={"x": doomed.outputs["y"]})
        other = wf.add_task(step, inputs={"x": 10})
        run_id = wf.run()
        try:
            gone = http.delete(f"/queue/tasks/{doomed.task_id}", params={"run_id": run_id})
            again = http.delete(f"/queue/tasks/{doomed.task_id}", params={"run_id": run_id})
        finally:
            gate.open()
        busy.get_outputs(busy_run)
        messages = wf.get_results(run_id)
        summary = http.get(f"/runs/{run_id}").json()["run"]

    assert gone.status_code == 200
    assert again.status_code in (200, 409)  # 409 once the first cancel is recorded
    tasks = summary["tasks"]
    assert tasks[doomed.task_id]["status"] == "cancelled"
    skipped = {"status": "skipped", "reason": f"upstream task {doomed.task_id} was cancelled"}
    assert skipped.items() <= tasks[after.task_id].items()
    assert tasks[other.task_id]["status"] == "completed"
    assert tasks[other.task_id]["result"] == {"y": 11}
    assert summary["status"] == "cancelled"
    assert [m["type"] for m in messages].count("task_cancelled") == 1


def test_a_running_task_can_be_cancelled_alone(one_slot: InProcessServer, gate: Gate) -> None:
    with LatticeClient(one_slot.url) as client, httpx.Client(base_url=one_slot.url) as http:
        wf = client.create_workflow()
        held = wf.add_task(hold, inputs={"gate": gate.port})
        after = wf.add_task(step, inputs={"x": held.outputs["y"]})
        run_id = wf.run()
        try:
            started = next(m for m in wf.stream(run_id, timeout=30) if m["type"] == "start_task")
            assert started["data"]["task_id"] == held.task_id
            cancelled = http.post(f"/runs/{run_id}/tasks/{held.task_id}/cancel")
        finally:
            gate.open()
        messages = wf.get_results(run_id)
        summary = http.get(f"/runs/{run_id}").json()["run"]
        unknown = http.post(f"/runs/{run_id}/tasks/nope/cancel")

    assert cancelled.status_code == 200 and unknown.status_code == 404
    assert summary["tasks"][held.task_id]["status"] == "cancelled"
    assert summary["tasks"][after.task_id]["status"] == "skipped"
    assert "finish_task" not in [m["type"] for m in messages]
