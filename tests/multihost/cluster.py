"""A Lattice cluster of three hosts on one machine: a head and two workers, each in its own
network namespace with its own address (see :mod:`tests.multihost.netns`), started with the
documented commands (docs/distributed.md): ``lattice start --head --host ADDR --token ...``
and ``lattice start --worker --addr HEAD:PORT --node-ip ADDR ...``.

Used by tests/multihost/test_three_hosts.py and by benchmarks/bench_cluster.py; both build
their workloads with :func:`build_dag` and time them with :func:`measure`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

from lattice import LatticeClient, LatticeTask, LatticeWorkflow, task
from tests.integration.server_fixture import HeadProcess
from tests.integration.test_distributed import WorkerProcess
from tests.multihost.netns import Host, Network

TOKEN = "three-hosts-token-5b2e"
#: seconds any single wait may take (three Ray nodes share two cores)
WAIT = 180.0
API_PORT, RAY_PORT, NODE_PORTS = 8000, 6379, "20000-20199"
#: what the GPU worker declares (there is no real GPU: Lattice counts what is declared)
GPU_MEM = 8000


def ray_node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


# --- the tasks of the DAG (this module travels by value) -------------------------------------


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1})
def source(params: dict[str, Any]) -> dict[str, Any]:
    return {"y": params["x"]}


@task(inputs=["x", "i"], outputs=["v", "node"], resources={"cpu": 0.05})
def light(params: dict[str, Any]) -> dict[str, Any]:
    return {"v": params["x"] + params["i"], "node": ray_node_id()}


@task(inputs=["x", "i"], outputs=["v", "node"])
def whole_cpu(params: dict[str, Any]) -> dict[str, Any]:
    return {"v": params["x"] + params["i"], "node": ray_node_id()}


@task(inputs=["x", "i"], outputs=["v", "node"], resources={"cpu": 2})
def two_cpus(params: dict[str, Any]) -> dict[str, Any]:
    return {"v": params["x"] + params["i"], "node": ray_node_id()}


@task(
    inputs=["x", "i"],
    outputs=["v", "node", "cuda"],
    resources={"cpu": 0.1, "gpu": 1, "gpu_mem": 2000},
)
def quarter_gpu(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "v": params["x"] + params["i"],
        "node": ray_node_id(),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def group_sink(size: int) -> Any:
    """A task that sums the ``v`` of ``size`` leaves (inputs ``p0`` ...)."""

    def sum_of(params: dict[str, Any]) -> dict[str, Any]:
        return {"s": sum(v for k, v in params.items() if k.startswith("p"))}

    sum_of.__name__ = sum_of.__qualname__ = f"sum_of_{size}"
    return task(inputs=[f"p{i}" for i in range(size)], outputs=["s"], resources={"cpu": 0.1})(
        sum_of
    )


# --- the DAG ---------------------------------------------------------------------------------


@dataclass
class Dag:
    """A built workflow and what it must compute."""

    workflow: LatticeWorkflow
    #: leaf task id -> its kind: "light", "cpu1", "cpu2", "gpu"
    kinds: dict[str, str]
    final: LatticeTask
    expected_total: int
    size: int


def build_dag(
    client: LatticeClient, leaves: int = 9_898, group: int = 99, mixed: bool = True
) -> Dag:
    """source -> ``leaves`` tasks of mixed requests -> sinks of ``group`` leaves -> final.

    The defaults make 10 000 tasks (1 + 9 898 + 100 + 1). Of the leaves, one in 600 asks for
    a quarter of a GPU (only the GPU worker has one), one in 600 for two CPUs (the head has
    one), one in 50 for one CPU, the rest for 0.05 CPU. Not ``mixed``: every leaf 0.05 CPU.
    """
    wf = client.create_workflow()
    x = 3
    src = wf.add_task(source, inputs={"x": x})
    kinds: dict[str, str] = {}
    sink_of_size: dict[int, Any] = {}
    sinks: list[LatticeTask] = []
    batch: list[LatticeTask] = []
    for i in range(leaves):
        kind, fn = (
            ("light", light)
            if not mixed
            else ("gpu", quarter_gpu)
            if i % 600 == 0
            else ("cpu2", two_cpus)
            if i % 600 == 300
            else ("cpu1", whole_cpu)
            if i % 50 == 25
            else ("light", light)
        )
        leaf = wf.add_task(fn, inputs={"x": src.outputs["y"], "i": i})
        kinds[leaf.task_id] = kind
        batch.append(leaf)
        if len(batch) == group or i == leaves - 1:
            sink = sink_of_size.setdefault(len(batch), group_sink(len(batch)))
            inputs = {f"p{k}": t.outputs["v"] for k, t in enumerate(batch)}
            sinks.append(wf.add_task(sink, inputs=inputs))
            batch = []
    final = wf.add_task(
        group_sink(len(sinks)), inputs={f"p{k}": s.outputs["s"] for k, s in enumerate(sinks)}
    )
    wf.flush()
    expected = sum(x + i for i in range(leaves))
    return Dag(wf, kinds, final, expected, 2 + leaves + len(sinks))


# --- the cluster -----------------------------------------------------------------------------


@dataclass
class ThreeHosts:
    net: Network
    head_host: Host
    head: HeadProcess
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    client: LatticeClient | None = None

    @property
    def url(self) -> str:
        return self.head.url

    def api(self) -> LatticeClient:
        assert self.client is not None
        return self.client

    def start_worker(self, role: str, *flags: str) -> WorkerProcess:
        """``lattice start --worker`` on a new host ``role``, registered when returned."""
        host = self.net.host(role)
        worker = WorkerProcess(
            f"{self.head_host.address}:{API_PORT}",
            *("--node-ip", host.address, "--ray-node-ports", NODE_PORTS, *flags),
            token=TOKEN,
            netns=host.name,
        )
        self.workers[role] = worker
        return worker

    def node_states(self) -> dict[str, str]:
        return {n["node_id"]: n["state"] for n in self.api().nodes()}

    def server_cpu_seconds(self) -> float:
        """CPU time of the head's server process so far (API, scheduler, Ray driver)."""
        assert self.head.proc is not None
        times = psutil.Process(self.head.proc.pid).cpu_times()
        return float(times.user + times.system)

    def gcs_cpu_seconds(self) -> float:
        """CPU time of the head's Ray GCS so far."""
        assert self.head.proc is not None
        total = 0.0
        for child in psutil.Process(self.head.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name().startswith("gcs_server"):
                    times = child.cpu_times()
                    total += times.user + times.system
        return total


@contextlib.contextmanager
def three_hosts() -> Iterator[ThreeHosts]:
    """The head (1 CPU) and workers ``gpu`` (2 CPUs, one 8000 MB GPU declared) and ``cpu``
    (2 CPUs), registered; everything stopped and the namespaces removed afterwards."""
    net = Network()
    cluster: ThreeHosts | None = None
    try:
        net.open()
        head_host = net.host("h")
        args = ["start", "--head", "--host", head_host.address, "--port", str(API_PORT)]
        args += ["--token", TOKEN, "--executor", "ray", "--ray-port", str(RAY_PORT)]
        args += ["--num-cpus", "1", "--ray-node-ports", NODE_PORTS]
        head = HeadProcess(
            args,
            port=API_PORT,
            host=head_host.address,
            wrap=head_host.wrap,
            env={"LATTICE_TOKEN": "", "RAY_USAGE_STATS_ENABLED": "0"},
        )
        cluster = ThreeHosts(net, head_host, head)
        head.start(timeout=WAIT)
        cluster.client = LatticeClient(head.url, token=TOKEN, timeout=WAIT)
        gpu = cluster.start_worker(
            "g", "--num-cpus", "2", "--num-gpus", "1", "--gpu-mem", str(GPU_MEM)
        )
        cpu = cluster.start_worker("c", "--num-cpus", "2")
        gpu.wait_ready(WAIT)
        cpu.wait_ready(WAIT)
        yield cluster
    finally:
        if cluster is not None:
            if cluster.client is not None:
                cluster.client.close()
            for worker in cluster.workers.values():
                worker.stop()
            cluster.head.stop(timeout=90)
        left = net.close()
        if left:
            raise RuntimeError(f"could not remove all the test network: {left}")


def measure(cluster: ThreeHosts, dag: Dag) -> dict[str, Any]:
    """Run ``dag`` once: its messages, and the head's throughput and CPU for it."""
    server, gcs = cluster.server_cpu_seconds(), cluster.gcs_cpu_seconds()
    start = time.perf_counter()
    run_id = dag.workflow.run()
    messages = dag.workflow.get_results(run_id, verbose=False, timeout=WAIT * 3)
    seconds = time.perf_counter() - start
    server = cluster.server_cpu_seconds() - server
    gcs = cluster.gcs_cpu_seconds() - gcs
    return {
        "run_id": run_id,
        "messages": messages,
        "tasks": dag.size,
        "seconds": seconds,
        "tasks_per_s": dag.size / seconds,
        "server_cpu_ms_per_task": server * 1e3 / dag.size,
        "gcs_cpu_ms_per_task": gcs * 1e3 / dag.size,
    }
