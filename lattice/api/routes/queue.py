"""The queue (spec/004's queue management API): what waits, and why."""

from __future__ import annotations

from fastapi import APIRouter

from lattice.api.deps import Orch
from lattice.api.models.schemas import PriorityRequest

router = APIRouter(tags=["queue"])


@router.get("/queue/status")
async def queue_status(orch: Orch) -> dict[str, object]:
    """Counts of the tasks of live runs that have not ended: ``total``, ``by_priority``
    (critical .. idle) and ``by_state`` (waiting_for_inputs, waiting_for_resources, in_batch,
    running)."""
    view = await orch.queue_view()
    return {"status": "success", **view.status()}


@router.get("/queue/details")
async def queue_details(orch: Orch, run_id: str | None = None) -> dict[str, object]:
    """Each such task (of ``run_id`` only, when given): its run, id, name, priority (declared
    and after aging), state, seconds waited since it became ready, what it asked for, why it
    waits (which resource no node has free, which upstream tasks it waits for, which batch),
    and its node once it runs. Ordered by state, then effective priority, then wait."""
    view = await orch.queue_view()
    order = {"running": 0, "waiting_for_resources": 1, "in_batch": 2, "waiting_for_inputs": 3}
    tasks = sorted(
        (t for t in view.tasks if run_id is None or t.run_id == run_id),
        key=lambda t: (order[t.state.value], t.effective_priority, -t.waited),
    )
    return {"status": "success", "tasks": [t.to_dict() for t in tasks]}


@router.put("/queue/tasks/{task_id}/priority")
async def set_task_priority(task_id: str, body: PriorityRequest, orch: Orch) -> dict[str, object]:
    """Give a task that has not started a new priority (0-4 or a level name). ``run_id`` is
    needed only when several live runs hold the task (runs of one workflow share task ids).
    404 no such open task, 409 it is running or has ended; the change is a
    ``task_priority_changed`` event in the run's log."""
    run_id, level = orch.set_task_priority(task_id, body.priority, body.run_id)
    return {"status": "success", "run_id": run_id, "task_id": task_id, "priority": level}


@router.delete("/queue/tasks/{task_id}")
async def cancel_queued_task(
    task_id: str, orch: Orch, run_id: str | None = None
) -> dict[str, object]:
    """Cancel that task alone, queued or running (``?run_id=`` as for the priority); the
    tasks that depend on it are skipped, naming it."""
    return {"status": "success", "run_id": orch.cancel_task(task_id, run_id), "task_id": task_id}
