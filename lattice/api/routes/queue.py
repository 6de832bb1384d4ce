"""The queue (spec/004's queue management API): what waits, and why."""

from __future__ import annotations

from fastapi import APIRouter

from lattice.api.deps import Orch

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
