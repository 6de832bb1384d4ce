"""Resource requests, node bookkeeping (CPU, memory, shared and whole GPUs) and placement."""

from __future__ import annotations

import math
from typing import Any

import pytest

from lattice.core.resource.manager import LOCAL_NODE_ID, ResourceManager
from lattice.core.resource.node import GpuResource, Node, NodeResources, NodeStatus
from lattice.exceptions import InvalidResourceError, NodeNotFoundError
from lattice.vocabulary import MB, TaskResourceRequirements

GB = 1024 * MB


def req(**kwargs: Any) -> TaskResourceRequirements:
    return TaskResourceRequirements.from_dict(kwargs)


def gpus(*mems: int) -> dict[int, GpuResource]:
    return {i: GpuResource(i, m, m) for i, m in enumerate(mems)}


def node(
    cpu: float = 4, mem_gb: int = 8, gpu_mems: tuple[int, ...] = (), node_id: str = "n"
) -> Node:
    return Node.create(node_id, "10.0.0.1", NodeResources(cpu, mem_gb * GB, gpus(*gpu_mems)))


def free_gpu_mem(n: Node) -> dict[int, int]:
    return {g.gpu_id: g.gpu_memory_available for g in n.available_resources.gpu_resources.values()}


# --- requirements -----------------------------------------------------------------------------


def test_requirements_default_to_one_cpu_and_nothing_else() -> None:
    assert TaskResourceRequirements.from_dict(None) == TaskResourceRequirements(1.0, 0, 0, 0)
    assert TaskResourceRequirements.from_dict({}) == TaskResourceRequirements(1.0, 0, 0, 0)


def test_requirements_parse_every_key_with_memory_in_mb() -> None:
    r = req(cpu=0.25, cpu_mem=512, gpu=2, gpu_mem=4000)

    assert r == TaskResourceRequirements(cpu=0.25, memory_bytes=512 * MB, gpu=2, gpu_memory=4000)
    assert r.to_dict() == {"cpu": 0.25, "cpu_mem": 512, "gpu": 2, "gpu_mem": 4000}
    assert r.describe() == "cpu=0.25, cpu_mem=512MB, gpu=2, gpu_mem=4000MB"


@pytest.mark.parametrize(
    ("resources", "named"),
    [
        ({"cpu": 1, "memory": 100}, "'memory'"),
        ({"gpus": 1, "cpus": 2}, "'cpus', 'gpus'"),
        ({"GPU": 1}, "'GPU'"),
    ],
)
def test_requirements_reject_unknown_keys_by_name(resources: dict[str, Any], named: str) -> None:
    with pytest.raises(
        InvalidResourceError, match=f"unknown resource key\\(s\\) {named}"
    ) as caught:
        TaskResourceRequirements.from_dict(resources)
    assert "allowed: cpu, cpu_mem, gpu, gpu_mem" in str(caught.value)


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"cpu": "2"}, "'cpu' must be a number"),
        ({"cpu": True}, "'cpu' must be a number"),
        ({"cpu": -1}, "'cpu' must be a number from 0 to 65536"),
        ({"cpu": math.nan}, "'cpu' must be a number from 0 to 65536"),
        ({"cpu": 1e9}, "'cpu' must be a number from 0 to 65536"),
        ({"cpu_mem": math.inf}, "'cpu_mem' must be a number from 0 to"),
        ({"cpu_mem": 1e308}, "'cpu_mem' must be a number from 0 to"),
        ({"gpu": 1e20}, "'gpu' must be a number from 0 to 1024"),
        ({"gpu": 1, "gpu_mem": 1e12}, "'gpu_mem' must be a number from 0 to"),
        ({"gpu": 0.5}, "'gpu' must be a whole number"),
        ({"gpu_mem": 1000}, "'gpu_mem' needs 'gpu' >= 1"),
    ],
)
def test_requirements_reject_bad_values_naming_the_key(
    resources: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidResourceError, match=message):
        TaskResourceRequirements.from_dict(resources)


def test_requirements_must_be_an_object() -> None:
    with pytest.raises(InvalidResourceError, match="must be an object, got list"):
        TaskResourceRequirements.from_dict([1, 2])  # type: ignore[arg-type]


# --- node: CPU and memory ---------------------------------------------------------------------


def test_fractional_cpu_packs_exactly_as_many_tasks_as_fit() -> None:
    n = node(cpu=1)
    tenth = req(cpu=0.1)

    granted = [n.allocate_resources(tenth) for _ in range(10)]

    assert granted == [()] * 10
    assert not n.can_run_task(tenth)
    assert n.allocate_resources(tenth) is None
    n.release_resources(tenth, ())
    assert n.can_run_task(tenth)


def test_memory_is_allocated_and_released() -> None:
    n = node(cpu=8, mem_gb=2)
    big = req(cpu=1, cpu_mem=1536)

    assert n.allocate_resources(big) == ()
    assert n.available_resources.memory_bytes == 512 * MB
    assert not n.can_run_task(big)
    assert n.can_run_task(req(cpu=1, cpu_mem=512))
    n.release_resources(big, ())
    assert n.available_resources.memory_bytes == 2 * GB
    assert n.available_resources.cpu_count == 8


def test_release_never_exceeds_the_total() -> None:
    n = node(cpu=2, mem_gb=1)

    n.release_resources(req(cpu=1, cpu_mem=100), ())

    assert n.available_resources.cpu_count == 2
    assert n.available_resources.memory_bytes == 1 * GB


def test_could_ever_run_looks_at_the_total_can_run_at_what_is_free() -> None:
    n = node(cpu=4)
    three = req(cpu=3)
    n.allocate_resources(three)

    assert not n.can_run_task(three)
    assert n.could_ever_run(three)
    assert not n.could_ever_run(req(cpu=5))


# --- node: GPUs -------------------------------------------------------------------------------


def test_gpu_with_memory_takes_that_much_of_one_gpu_and_others_share_it() -> None:
    n = node(gpu_mems=(16000, 16000))
    share = req(cpu=0.1, gpu=1, gpu_mem=4000)

    first = n.allocate_resources(share)
    second = n.allocate_resources(share)

    assert first == second  # packed onto the same GPU, keeping the other one whole
    (gid,) = first or (None,)
    assert gid is not None
    assert free_gpu_mem(n)[gid] == 8000
    assert free_gpu_mem(n)[1 - gid] == 16000


def test_gpu_mem_zero_takes_a_whole_idle_gpu() -> None:
    n = node(gpu_mems=(16000, 16000))
    whole = req(cpu=0.1, gpu=1)
    share = req(cpu=0.1, gpu=1, gpu_mem=4000)

    shared_gpu = n.allocate_resources(share)
    whole_gpu = n.allocate_resources(whole)

    assert shared_gpu and whole_gpu and shared_gpu != whole_gpu
    assert free_gpu_mem(n)[whole_gpu[0]] == 0
    # No idle GPU is left: the shared one is partly used, the other is taken whole.
    assert n.allocate_resources(whole) is None
    # ...but the shared GPU still has room for more sharing tasks.
    assert n.allocate_resources(share) == shared_gpu

    n.release_resources(whole, whole_gpu)
    assert free_gpu_mem(n)[whole_gpu[0]] == 16000
    assert n.allocate_resources(whole) == whole_gpu


def test_a_shared_request_larger_than_any_gpu_does_not_fit() -> None:
    n = node(gpu_mems=(8000,))

    assert not n.can_run_task(req(gpu=1, gpu_mem=9000))
    assert not n.could_ever_run(req(gpu=1, gpu_mem=9000))
    assert n.could_ever_run(req(gpu=1, gpu_mem=8000))


def test_several_gpus_each_need_the_memory() -> None:
    n = node(gpu_mems=(16000, 6000, 16000))

    granted = n.allocate_resources(req(gpu=2, gpu_mem=10000))

    assert granted is not None and sorted(granted) == [0, 2]
    assert free_gpu_mem(n) == {0: 6000, 1: 6000, 2: 6000}
    n.release_resources(req(gpu=2, gpu_mem=10000), granted)
    assert free_gpu_mem(n) == {0: 16000, 1: 6000, 2: 16000}


def test_a_gpu_of_unknown_memory_is_still_taken_whole_by_one_task_at_a_time() -> None:
    # A Ray node's GPUs whose memory is not known are registered with 0 MB: whole-GPU only.
    n = node(gpu_mems=(0,))
    whole = req(cpu=0.1, gpu=1)

    granted = n.allocate_resources(whole)

    assert granted == (0,)
    assert not n.can_run_task(whole)
    assert n.allocate_resources(whole) is None
    assert not n.can_run_task(req(cpu=0.1, gpu=1, gpu_mem=1))
    n.release_resources(whole, granted)
    assert n.allocate_resources(whole) == (0,)


def test_a_cpu_only_node_never_runs_a_gpu_task() -> None:
    assert not node().could_ever_run(req(gpu=1))


# --- node resources from the wire -------------------------------------------------------------


def test_node_resources_from_wire() -> None:
    res = NodeResources.from_wire(
        {"cpu": 8, "cpu_mem": 1024, "gpu_resource": {"0": {"gpu_id": 0, "gpu_mem": 24000}}}
    )

    assert res.cpu_count == 8
    assert res.memory_bytes == 1024 * MB
    assert res.gpu_resources[0].gpu_memory_total == 24000
    assert res.gpu_resources[0].gpu_memory_available == 24000
    with pytest.raises(InvalidResourceError, match="'disk'"):
        NodeResources.from_wire({"cpu": 1, "disk": 5})
    with pytest.raises(InvalidResourceError, match="'cpu' must be a number from 0 to 65536"):
        NodeResources.from_wire({"cpu": -1})


@pytest.mark.parametrize(
    ("resources", "named"),
    [
        ({"cpu": math.nan}, "'cpu'"),
        ({"cpu": math.inf}, "'cpu'"),
        ({"cpu": 1e9}, "'cpu'"),
        ({"cpu_mem": 1e308}, "'cpu_mem'"),
        ({"cpu_mem": -0.5}, "'cpu_mem'"),
        ({"gpu_resource": {"0": {"gpu_id": 0, "gpu_mem": math.inf}}}, "gpu_mem"),
        ({"gpu_resource": {"0": {"gpu_id": 0, "gpu_num": 1e20}}}, "gpu_num"),
        ({"gpu_resource": {"0": {"gpu_id": 0, "gpu_num": 0}}}, "gpu_num"),
        ({"gpu_resource": {"0": {"gpu_id": -1}}}, "gpu_id"),
        ({"gpu_resource": {"0": {"gpu_id": "0"}}}, "gpu_id"),
        ({"gpu_resource": {"a": {}, "b": {}}}, "gpu_id"),
        ({"gpu_resource": {str(i): {"gpu_id": i} for i in range(1025)}}, "more than 1024"),
        ({"gpu_resource": {"0": {"gpu_id": 1}, "1": {"gpu_id": 1}}}, "listed twice"),
    ],
)
def test_node_resources_must_be_finite_and_bounded(resources: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidResourceError, match=named):
        NodeResources.from_wire(resources)


# --- the resource manager ---------------------------------------------------------------------


def manager(*nodes: tuple[str, NodeResources]) -> ResourceManager:
    rm = ResourceManager()
    for node_id, res in nodes:
        rm.add_node(node_id, f"ip-{node_id}", res)
    return rm


def test_select_node_allocates_on_the_node_with_most_cpu_free() -> None:
    rm = manager(("small", NodeResources(2, GB)), ("big", NodeResources(8, GB)))

    picked = rm.select_node(req(cpu=1))

    assert picked is not None and picked.node_id == "big" and picked.node_ip == "ip-big"
    assert rm.get_node("big").available_resources.cpu_count == 7
    assert rm.get_node("small").available_resources.cpu_count == 2


def test_select_node_keeps_gpu_nodes_for_gpu_work() -> None:
    rm = manager(("gpu", NodeResources(16, GB, gpus(16000))), ("cpu", NodeResources(2, GB)))

    cpu_task = rm.select_node(req(cpu=1))
    gpu_task = rm.select_node(req(cpu=1, gpu=1, gpu_mem=1000))

    assert cpu_task is not None and cpu_task.node_id == "cpu"
    assert gpu_task is not None and gpu_task.node_id == "gpu" and gpu_task.gpu_id == 0


def test_select_node_returns_none_when_nothing_has_room_now() -> None:
    rm = manager(("n", NodeResources(4, GB)))
    three = req(cpu=3)

    first = rm.select_node(three)
    assert first is not None
    assert rm.select_node(three) is None
    assert rm.can_ever_fit(three)

    rm.release_task_resources(first.node_id, three, first.gpu_ids)
    assert rm.select_node(three) is not None


def test_an_avoided_node_is_used_only_when_no_other_could_ever_hold_the_task() -> None:
    rm = manager(("dying", NodeResources(8, GB)), ("other", NodeResources(2, GB)))
    two = req(cpu=2)

    # Another node has room: it is chosen although the avoided one has more CPU free.
    first = rm.select_node(two, frozenset({"dying"}))
    # Another node could hold it, once free: the task waits for it.
    waiting = rm.select_node(two, frozenset({"dying"}))
    # Only the avoided node could ever hold it: it goes there.
    only_there = rm.select_node(req(cpu=4), frozenset({"dying"}))

    assert first is not None and first.node_id == "other"
    assert waiting is None
    assert only_there is not None and only_there.node_id == "dying"


def test_a_request_no_node_can_ever_hold_is_explained() -> None:
    rm = manager(("small", NodeResources(2, 4 * GB)), ("large", NodeResources(8, 16 * GB)))
    huge = req(cpu=16, cpu_mem=1024)

    assert not rm.can_ever_fit(huge)
    text = rm.explain_never_fits(huge)
    assert "task asks for cpu=16, cpu_mem=1024MB" in text
    assert "the largest node (large) has cpu=8, cpu_mem=16384MB" in text


def test_explain_mentions_the_gpus_of_the_largest_node() -> None:
    rm = manager(("g", NodeResources(8, GB, gpus(16000, 16000))))

    text = rm.explain_never_fits(req(gpu=1, gpu_mem=20000))

    assert "gpu=1, gpu_mem=20000MB" in text
    assert "2 GPU(s) [16000MB, 16000MB]" in text


def test_explain_when_no_node_is_alive() -> None:
    rm = manager(("n", NodeResources(4, GB)))
    rm.mark_dead("n")

    assert not rm.can_ever_fit(req(cpu=1))
    assert rm.explain_never_fits(req(cpu=1)) == "task asks for cpu=1 but no node is alive"


def test_a_draining_node_takes_no_new_tasks_and_its_running_ones_release() -> None:
    rm = manager(("a", NodeResources(4, GB)), ("b", NodeResources(2, GB)))
    running = rm.select_node(req(cpu=1))
    assert running is not None and running.node_id == "a"

    rm.drain_node("a")

    assert rm.get_node("a").status is NodeStatus.DRAINING
    picked = rm.select_node(req(cpu=1))
    assert picked is not None and picked.node_id == "b"
    assert not rm.can_ever_fit(req(cpu=3))  # only "a" could, and it is draining
    rm.release_task_resources("a", req(cpu=1), ())
    assert rm.get_node("a").available_resources.cpu_count == 4


def test_remove_node_forgets_it_and_a_late_release_is_ignored() -> None:
    rm = manager(("a", NodeResources(4, GB)))
    picked = rm.select_node(req(cpu=1))
    assert picked is not None

    rm.remove_node("a")

    assert rm.nodes() == []
    rm.release_task_resources("a", req(cpu=1), ())
    with pytest.raises(NodeNotFoundError, match="Node a not found"):
        rm.remove_node("a")
    with pytest.raises(NodeNotFoundError):
        rm.drain_node("a")


def test_a_node_that_registers_again_keeps_its_allocations() -> None:
    rm = manager(("a", NodeResources(4, GB)))
    assert rm.select_node(req(cpu=3)) is not None
    rm.drain_node("a")

    rm.add_node("a", "new-ip", NodeResources(4, GB))

    n = rm.get_node("a")
    assert (n.status, n.node_ip, n.available_resources.cpu_count) == (NodeStatus.ALIVE, "new-ip", 1)


def test_check_node_health_marks_missing_nodes_dead() -> None:
    rm = manager(("a", NodeResources(4, GB)), ("b", NodeResources(4, GB)))

    assert rm.check_node_health({"a"}) == ["b"]
    assert rm.get_node("b").status is NodeStatus.DEAD
    assert rm.check_node_health({"a"}) == []  # already dead: reported once
    picked = rm.select_node(req(cpu=4))
    assert picked is not None and picked.node_id == "a"
    assert rm.select_node(req(cpu=1)) is None
    assert not rm.can_ever_fit(req(cpu=5))


def test_initialize_local_uses_the_resources_given() -> None:
    rm = ResourceManager()

    rm.initialize_local(NodeResources(3, 2 * GB))

    assert rm.head_node_id == LOCAL_NODE_ID
    assert rm.snapshot() == [
        {
            "node_id": "local",
            "node_ip": "127.0.0.1",
            "state": "alive",
            "total": {"cpu": 3, "memory_bytes": 2 * GB, "gpus": {}},
            "available": {"cpu": 3, "memory_bytes": 2 * GB, "gpus": {}},
        }
    ]


def test_initialize_with_ray_registers_alive_nodes_as_ray_describes_them() -> None:
    rm = ResourceManager()

    rm.initialize_with_ray(
        [
            {
                "NodeID": "aa",
                "Alive": True,
                "NodeManagerAddress": "10.0.0.9",
                "Resources": {"CPU": 4.0, "memory": 2 * GB, "GPU": 2.0},
            },
            {"NodeID": "dead", "Alive": False, "Resources": {"CPU": 64.0}},
        ]
    )

    assert [n.node_id for n in rm.nodes()] == ["aa"]
    assert rm.head_node_id == "aa"
    total = rm.get_node("aa").total_resources
    assert (total.cpu_count, total.memory_bytes, sorted(total.gpu_resources)) == (4, 2 * GB, [0, 1])
    # Memory of a remote node's GPUs is unknown: whole-GPU tasks only.
    assert rm.can_ever_fit(req(gpu=2))
    assert not rm.can_ever_fit(req(gpu=1, gpu_mem=100))


# --- joining nodes: in Ray, not yet registered -------------------------------------------------


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ray_node(node_id: str, cpu: float, gpu: int = 0, head: bool = False) -> dict[str, Any]:
    resources: dict[str, float] = {"CPU": cpu, "memory": 4 * GB}
    if gpu:
        resources["GPU"] = float(gpu)
    if head:
        resources["node:__internal_head__"] = 1.0
    return {
        "NodeID": node_id,
        "Alive": True,
        "NodeManagerAddress": "10.0.0.9",
        "Resources": resources,
    }


def gpu_worker_offer() -> NodeResources:
    """What a worker started with ``--num-cpus 2 --num-gpus 1 --gpu-mem 8000`` registers."""
    return NodeResources(2, 4 * GB, gpus(8000))


def cluster_with_joining_gpu_node(clock: Clock, grace: float = 30) -> ResourceManager:
    rm = ResourceManager(join_grace=grace, clock=clock)
    rm.initialize_with_ray([ray_node("head", 1, head=True)])
    rm.initialize_with_ray([ray_node("w", 2, gpu=1)])  # Ray's view: 1 GPU of unknown memory
    return rm


def test_a_node_ray_reports_before_its_worker_registers_is_joining_and_takes_no_task() -> None:
    clock = Clock()
    rm = cluster_with_joining_gpu_node(clock)

    states = {n["node_id"]: n["state"] for n in rm.snapshot()}
    assert states == {"head": "alive", "w": "joining"}
    assert rm.head_node_id == "head"
    # Fits Ray's figures, but the node has not said what it offers: nothing goes there yet.
    assert rm.select_node(req(cpu=1, gpu=1)) is None
    assert rm.select_node(req(cpu=2)) is None
    assert rm.get_node("w").available_resources.cpu_count == 2


def test_a_task_only_a_joining_node_might_hold_waits_and_runs_once_it_registers() -> None:
    clock = Clock()
    rm = cluster_with_joining_gpu_node(clock)
    shared_gpu = req(cpu=0.5, gpu=1, gpu_mem=4000)

    # Ray does not know the GPU's memory; the joining node might have it: wait, not fail.
    assert rm.can_ever_fit(shared_gpu)
    assert rm.select_node(shared_gpu) is None
    rm.add_node("w", "10.0.0.9", gpu_worker_offer())

    placed = [rm.select_node(shared_gpu) for _ in range(3)]
    assert [p.node_id if p else None for p in placed] == ["w", "w", None]  # 8000 MB: two fit
    assert rm.get_node("w").status is NodeStatus.ALIVE
    assert rm.next_join_deadline() is None


def test_a_task_no_joining_node_could_hold_still_fails_at_once() -> None:
    rm = cluster_with_joining_gpu_node(Clock())

    # Ray's figures bound what a worker declares: 2 CPUs, 1 GPU.
    assert not rm.can_ever_fit(req(cpu=3))
    assert not rm.can_ever_fit(req(gpu=2))
    assert "no node can ever provide" in rm.explain_never_fits(req(gpu=2))


def test_a_joining_node_that_never_registers_counts_with_rays_figures_after_the_grace() -> None:
    clock = Clock()
    rm = cluster_with_joining_gpu_node(clock, grace=30)
    shared_gpu = req(gpu=1, gpu_mem=4000)
    assert rm.next_join_deadline() == 1030.0

    clock.now = 1029.9
    assert rm.can_ever_fit(shared_gpu)
    assert rm.get_node("w").status is NodeStatus.JOINING
    clock.now = 1030.0

    # Alive with Ray's figures: whole-GPU and CPU tasks run, GPU-memory ones can never fit.
    assert not rm.can_ever_fit(shared_gpu)
    assert rm.get_node("w").status is NodeStatus.ALIVE
    assert rm.next_join_deadline() is None
    selected = rm.select_node(req(cpu=1, gpu=1))
    assert selected is not None and selected.node_id == "w"


def test_a_joining_node_that_dies_stays_dead_after_its_grace() -> None:
    clock = Clock()
    rm = cluster_with_joining_gpu_node(clock)

    assert rm.check_node_health({"head"}) == ["w"]
    clock.now += 60

    assert rm.get_node("w").status is NodeStatus.DEAD
    assert not rm.can_ever_fit(req(gpu=1))
    assert rm.next_join_deadline() is None


def test_a_node_registered_before_ray_is_read_again_stays_as_registered() -> None:
    rm = ResourceManager(clock=Clock())
    rm.initialize_with_ray([ray_node("head", 1, head=True)])
    rm.add_node("w", "10.0.0.9", gpu_worker_offer())

    rm.initialize_with_ray([ray_node("w", 2, gpu=1)])

    gpu = rm.get_node("w").total_resources.gpu_resources[0]
    assert (rm.get_node("w").status, gpu.gpu_memory_total) == (NodeStatus.ALIVE, 8000)


def test_without_a_head_marker_the_first_node_ray_lists_is_the_head() -> None:
    rm = ResourceManager(clock=Clock())

    rm.initialize_with_ray([ray_node("a", 1), ray_node("b", 1)])

    assert rm.head_node_id == "a"
    assert {n.node_id: n.status for n in rm.nodes()} == {
        "a": NodeStatus.ALIVE,
        "b": NodeStatus.JOINING,
    }
