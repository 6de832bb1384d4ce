"""A run's events on the wire, through a real server: their exact spec/002 form, and the run's
state (``GET /runs/{id}``) as the fold of what the WebSocket sent."""

from __future__ import annotations

from typing import Any

import httpx

from lattice import LatticeClient, task
from lattice.core.run.events import event_from_wire
from lattice.core.run.state import RunState
from tests.integration.server_fixture import InProcessServer


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1})
def double(params: dict[str, int]) -> dict[str, int]:
    return {"y": params["x"] * 2}


@task(inputs=["y"], outputs=["z"], resources={"cpu": 0.1})
def explode(params: dict[str, int]) -> dict[str, int]:
    raise ValueError(f"cannot take {params['y']}")


WIRE_FIELDS = {
    "start_task": ["workflow_id", "task_id", "task_name", "node_ip", "node_id", "gpu_ids"],
    "finish_task": ["workflow_id", "task_id", "task_name", "result"],
    "task_exception": ["workflow_id", "task_id", "task_name", "error"],
    "task_skipped": ["workflow_id", "task_id", "reason"],
    "finish_workflow": ["run_id", "workflow_id", "status", "success", "tasks"],
}


def run_mixed(server: InProcessServer) -> tuple[str, str, list[dict[str, Any]]]:
    """ok -> fails -> skipped, beside an independent ok."""
    with LatticeClient(server.url) as client:
        wf = client.create_workflow()
        first = wf.add_task(double, inputs={"x": 4})
        bad = wf.add_task(explode, inputs={"y": first.outputs["y"]})
        wf.add_task(double, inputs={"x": bad.outputs["z"]})
        wf.add_task(double, inputs={"x": 1})
        run_id = wf.run()
        messages = wf.get_results(run_id)
        return wf.workflow_id, run_id, messages


def test_messages_keep_their_spec_form_field_for_field(api_server: InProcessServer) -> None:
    workflow_id, _, messages = run_mixed(api_server)

    assert [m["seq"] for m in messages] == list(range(len(messages)))
    for message in messages:
        assert list(message) == ["type", "data", "seq"]
        assert list(message["data"]) == WIRE_FIELDS[message["type"]], message
        assert message["data"]["workflow_id"] == workflow_id
    end = messages[-1]
    assert end["type"] == "finish_workflow"
    assert end["data"]["status"] == "failed" and end["data"]["success"] is False
    assert end["data"]["tasks"] == {"completed": 2, "failed": 1, "skipped": 1}
    (error,) = [m["data"]["error"] for m in messages if m["type"] == "task_exception"]
    assert (error["type"], error["message"]) == ("ValueError", "cannot take 8")
    assert "raise ValueError" in error["traceback"]


def test_the_run_state_is_the_fold_of_the_streamed_events(api_server: InProcessServer) -> None:
    workflow_id, run_id, messages = run_mixed(api_server)
    with httpx.Client(base_url=api_server.url) as http:
        summary = http.get(f"/runs/{run_id}").json()["run"]
        listed = http.get(f"/get_workflow_tasks/{workflow_id}").json()["tasks"]

    tasks = [(t["task_id"], t["task_name"]) for t in listed]
    folded = RunState.replay(
        run_id, workflow_id, tasks, [event_from_wire(run_id, m) for m in messages]
    )
    view = folded.view()
    # GET /runs/{id} adds names and times (the dashboard's) to the fold's fields.
    assert view == {tid: {k: t[k] for k in view.get(tid, t)} for tid, t in summary["tasks"].items()}
    assert folded.status.value == summary["status"] == "failed"
    assert summary["events"] == len(messages)
