"""Distributed mode on a real multi-node Ray cluster on this one machine.

One head (``lattice start --head --host 0.0.0.0 --token ...``, a Ray node of 1 CPU) and two
``lattice start --worker`` processes that declare their own resources: ``gpu`` (2 CPUs, one
8000 MB GPU declared by flag) and ``cpu`` (2 CPUs). Each worker runs in its own session, so a
test can kill its whole process group. Tests that need more (a worker to kill, one in its own
network namespace) start it themselves.

The tests share the cluster and run in file order: the disconnect test re-registers the
``cpu`` worker it drained, and the last test stops that worker for good.

Tasks wait at a :class:`Door` (a loopback socket) until the test lets them through, so "this
task is running now" is known, never guessed; nothing sleeps to wait.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from lattice import LatticeClient, task
from lattice.cli.cli import main
from lattice.config.settings import ServerSettings
from lattice.core.resource.node import NodeResources
from lattice.core.worker.worker import READY_LINE, Worker
from lattice.exceptions import LatticeInputError, LatticeUsageError, TaskFailedError
from lattice.executor.ray.ports import NodePorts
from tests.integration.server_fixture import REPO_ROOT, HeadProcess, free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

TOKEN = "distributed-test-token-7c1e"
#: seconds any single wait may take (Ray nodes start slowly on a busy machine)
WAIT = 120.0
#: a killed node must be seen dead and its task running elsewhere within this many seconds
REDISPATCH_WITHIN = 20.0
MB = 1024 * 1024


# --- tasks (this module travels by value to the Ray workers) ---------------------------------


def pass_door(port: int, host: str = "127.0.0.1") -> None:
    with socket.create_connection((host, port), timeout=WAIT) as conn:
        conn.settimeout(WAIT)
        if conn.recv(2) != b"go":
            raise RuntimeError("the door was closed")


def ray_node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


@task(inputs=["x"], outputs=["node", "cuda"], resources={"gpu": 1, "cpu": 0.5})
def on_a_gpu(params: dict[str, Any]) -> dict[str, Any]:
    return {"node": ray_node_id(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}


@task(inputs=["x"], outputs=["node"], resources={"cpu": 2})
def two_cpus(params: dict[str, Any]) -> dict[str, Any]:
    return {"node": ray_node_id()}


@task(
    inputs=["door"],
    outputs=["node", "cuda", "start", "end"],
    resources={"gpu": 1, "gpu_mem": 4000, "cpu": 0.1},
)
def half_a_gpu(params: dict[str, Any]) -> dict[str, Any]:
    start = time.time()
    pass_door(params["door"])
    return {
        "node": ray_node_id(),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "start": start,
        "end": time.time(),
    }


@task(inputs=["door", "x"], outputs=["node", "y"], resources={"cpu": 2})
def square_behind_door(params: dict[str, Any]) -> dict[str, Any]:
    pass_door(params["door"])
    return {"node": ray_node_id(), "y": params["x"] ** 2}


@task(inputs=["door", "host", "x"], outputs=["node", "y"], resources={"cpu": 2})
def square_behind_remote_door(params: dict[str, Any]) -> dict[str, Any]:
    pass_door(params["door"], params["host"])
    return {"node": ray_node_id(), "y": params["x"] ** 2}


@task(inputs=["y"], outputs=["z"], resources={"cpu": 0.5})
def plus_one(params: dict[str, Any]) -> int:
    return int(params["y"]) + 1


@task(inputs=["door"], outputs=["node"], resources={"cpu": 3})
def three_cpus_behind_door(params: dict[str, Any]) -> dict[str, Any]:
    pass_door(params["door"])
    return {"node": ray_node_id()}


@task(inputs=["x"], outputs=["node"], resources={"cpu": 0.5, "cpu_mem": 150_000})
def light_on_the_roomy_node(params: dict[str, Any]) -> dict[str, Any]:
    """Light (it runs on its node's task host); only a worker declaring 150 GB holds it."""
    return {"node": ray_node_id()}


@task(inputs=["x"], outputs=["node"], resources={"cpu": 4})
def four_cpus(params: dict[str, Any]) -> dict[str, Any]:
    return {"node": ray_node_id()}


# --- helpers --------------------------------------------------------------------------------


class Door:
    """A socket tasks block on: :meth:`arrive` returns when one is there, :meth:`let_through`
    sends it on. Lets a test hold several tasks running at once, deterministically."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.create_server((host, 0))
        self.port = int(self._sock.getsockname()[1])

    def arrive(self, timeout: float = WAIT) -> socket.socket:
        self._sock.settimeout(timeout)
        conn, _ = self._sock.accept()
        return conn

    @staticmethod
    def let_through(conn: socket.socket) -> None:
        with conn:
            conn.sendall(b"go")

    def close(self) -> None:
        self._sock.close()


class WorkerProcess:
    """``lattice start --worker`` in its own session; its output is read by a thread."""

    def __init__(
        self, addr: str, *flags: str, token: str | None = TOKEN, netns: str | None = None
    ) -> None:
        cmd = [sys.executable, "-m", "lattice.cli.cli", "start", "--worker", "--addr", addr]
        # A Ray node of its own: nodes starting at once in one directory race for socket names.
        self.temp_dir = tempfile.mkdtemp(prefix="lattice-ray-")
        cmd += ["--ray-temp-dir", self.temp_dir, *flags]
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        env = {k: v for k, v in os.environ.items() if k != "LATTICE_TOKEN"}
        env["PYTHONUNBUFFERED"] = "1"
        if token is not None:
            env["LATTICE_TOKEN"] = token
        self.lines: list[str] = []
        self.node_id = ""
        self.node_ip = ""
        self._ready = threading.Event()
        self._new_line = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if READY_LINE in line:
                found = re.search(r"node_id=(\w+) node_ip=(\S+)", line)
                assert found, line
                self.node_id, self.node_ip = found.group(1), found.group(2)
                self._ready.set()
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        self._ready.set()  # EOF: the worker exited; wait_ready sees that
        with self._new_line:
            self._eof = True
            self._new_line.notify_all()

    def wait_for_line(self, text: str, timeout: float = WAIT) -> None:
        """Block until the worker prints a line containing ``text``."""
        with self._new_line:
            if not self._new_line.wait_for(lambda: text in self.output or self._eof, timeout):
                raise TimeoutError(f"worker did not print {text!r}:\n{self.output}")
        assert text in self.output, self.output

    def wait_ready(self, timeout: float = WAIT) -> WorkerProcess:
        if not self._ready.wait(timeout) or not self.node_id:
            self.kill()
            raise RuntimeError(f"worker did not register within {timeout}s:\n{self.output}")
        return self

    def wait(self, timeout: float = WAIT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def session(self) -> list[psutil.Process]:
        """Every process still in the worker's session (its Ray node's included)."""
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(process.pid) == self.proc.pid and process.status() != "zombie":
                    found.append(process)
        return found

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def stop(self) -> None:
        """Stop it the way a user does (SIGTERM), or kill its group if that fails."""
        if self.running:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(90)
        self.kill()  # the group: nothing of it may outlive the test


@dataclass
class Cluster:
    head: HeadProcess
    ray_port: int
    gpu: WorkerProcess
    cpu: WorkerProcess
    client: LatticeClient
    api: httpx.Client

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["node_id"]: n for n in self.client.nodes()}

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.api.get(f"/runs/{run_id}/events").json()["events"])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    from tests.conftest import require_module

    require_module("ray", "distributed mode")
    port, ray_port = free_port(), free_port()
    args = ["start", "--head", "--host", "0.0.0.0", "--port", str(port), "--token", TOKEN]
    args += ["--executor", "ray", "--ray-port", str(ray_port), "--num-cpus", "1"]
    head = HeadProcess(args, port=port, env={"LATTICE_TOKEN": ""})
    head.start(timeout=180)
    workers: list[WorkerProcess] = []
    client = LatticeClient(head.url, token=TOKEN, timeout=WAIT)
    api = httpx.Client(base_url=head.url, headers={"X-Lattice-Token": TOKEN}, timeout=WAIT)
    try:
        addr = f"127.0.0.1:{port}"
        # Both join at once: starting a Ray node takes many seconds on a busy machine.
        gpu = WorkerProcess(addr, "--num-cpus", "2", "--num-gpus", "1", "--gpu-mem", "8000")
        workers.append(gpu)
        # Its last test lets a task finish while it drains; a node that ran light tasks
        # (on a task host actor) is only stopped when the drain times out.
        cpu = WorkerProcess(addr, "--num-cpus", "2", "--drain-timeout", "20")
        workers.append(cpu)
        gpu.wait_ready()
        cpu.wait_ready()
        yield Cluster(head, ray_port, gpu, cpu, client, api)
    finally:
        client.close()
        api.close()
        for worker in workers:
            worker.stop()
        head.stop(timeout=90)


def finished(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """``task_id -> result`` of every finish_task, checking that none came twice."""
    results: dict[str, Any] = {}
    for m in messages:
        if m["type"] == "finish_task":
            assert m["data"]["task_id"] not in results, f"finished twice: {m}"
            results[m["data"]["task_id"]] = m["data"]["result"]
    return results


def starts(messages: list[dict[str, Any]], task_id: str) -> list[dict[str, Any]]:
    return [
        m["data"] for m in messages if m["type"] == "start_task" and m["data"]["task_id"] == task_id
    ]


# --- pure parts -----------------------------------------------------------------------------


def test_worker_resources_are_measured_and_overridden_by_flags() -> None:
    plain = Worker("http://127.0.0.1:1")
    flagged = Worker(
        "http://127.0.0.1:1", num_cpus=2.5, memory_mb=4096, num_gpus=2, gpu_mem_mb=8000
    )
    measured, declared = plain._collect_resources(), flagged._collect_resources()
    plain.stop()  # never connected: only closes its HTTP client
    flagged.stop()

    assert measured["cpu"] == os.cpu_count()
    assert measured["cpu_mem"] == psutil.virtual_memory().total // MB
    assert declared == {
        "cpu": 2.5,
        "cpu_mem": 4096,
        "gpu_resource": {
            "0": {"gpu_id": 0, "gpu_mem": 8000, "gpu_num": 1},
            "1": {"gpu_id": 1, "gpu_mem": 8000, "gpu_num": 1},
        },
    }
    assert NodeResources.from_wire(declared).gpu_resources[1].gpu_memory_total == 8000
    with pytest.raises(LatticeInputError, match="num_gpus"):
        Worker("http://127.0.0.1:1", num_gpus=-1)


def test_node_ports_pin_every_ray_listener_inside_the_range() -> None:
    ports = NodePorts.parse("20000-20199")
    flags = dict(f.removeprefix("--").split("=") for f in ports.flags(head=True))

    assert all(20000 <= int(v) <= 20199 for v in flags.values())
    assert (flags["min-worker-port"], flags["max-worker-port"]) == ("20010", "20199")
    # The head's port for its task hosts: in the range, and no Ray listener's.
    assert 20000 <= ports.host_connections < 20010
    assert str(ports.host_connections) not in flags.values()
    assert "ray-client-server-port" not in dict(
        f.removeprefix("--").split("=") for f in ports.flags(head=False)
    )
    for bad in ("20000", "20000-20010", "x-y", "80-200"):
        with pytest.raises(LatticeInputError):
            NodePorts.parse(bad)


# --- the cluster ----------------------------------------------------------------------------


def test_nodes_lists_head_and_workers_with_their_resources(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = cluster.nodes()

    assert cluster.client.get_ray_head_port() == cluster.ray_port
    gpu, cpu = nodes[cluster.gpu.node_id], nodes[cluster.cpu.node_id]
    (head,) = [n for i, n in nodes.items() if i not in (cluster.gpu.node_id, cluster.cpu.node_id)]
    assert all(re.fullmatch(r"[0-9a-f]{56}", i) for i in nodes)  # Ray NodeIDs
    assert [n["state"] for n in (head, gpu, cpu)] == ["alive"] * 3
    assert (head["total"]["cpu"], gpu["total"]["cpu"], cpu["total"]["cpu"]) == (1, 2, 2)
    assert gpu["total"]["gpus"] == {"0": {"gpu_mem_total": 8000, "gpu_mem_available": 8000}}
    assert gpu["available"] == gpu["total"]
    assert cpu["total"]["gpus"] == {} and head["total"]["gpus"] == {}
    assert cpu["total"]["memory_bytes"] == psutil.virtual_memory().total // MB * MB
    assert gpu["node_ip"] == cluster.gpu.node_ip

    assert main(["status", "--addr", f"127.0.0.1:{cluster.head.port}", "--token", TOKEN]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    by_id = {row.split()[0]: row.split() for row in rows}
    assert by_id[cluster.gpu.node_id][2] == "alive" and "0:8000/8000" in by_id[cluster.gpu.node_id]
    assert set(by_id) == set(nodes)


def test_tasks_land_on_the_node_with_what_they_ask_for(cluster: Cluster) -> None:
    wf = cluster.client.create_workflow()
    gpu_task = wf.add_task(on_a_gpu, inputs={"x": 1})
    cpu_task = wf.add_task(two_cpus, inputs={"x": 2})
    messages = wf.get_results(wf.run(), verbose=False, timeout=WAIT)

    results = finished(messages)
    (gpu_start,) = starts(messages, gpu_task.task_id)
    assert gpu_start["node_id"] == cluster.gpu.node_id and gpu_start["gpu_ids"] == [0]
    assert results[gpu_task.task_id] == {"node": cluster.gpu.node_id, "cuda": "0"}
    # Two CPUs fit either worker; the GPU worker is kept for GPU work.
    (cpu_start,) = starts(messages, cpu_task.task_id)
    assert cpu_start["node_id"] == cluster.cpu.node_id and cpu_start["gpu_ids"] == []
    assert results[cpu_task.task_id] == {"node": cluster.cpu.node_id}


def test_two_tasks_share_a_gpu_by_memory_and_a_third_waits(cluster: Cluster) -> None:
    door = Door()
    try:
        wf = cluster.client.create_workflow()
        tasks = [wf.add_task(half_a_gpu, inputs={"door": door.port}) for _ in range(3)]
        run_id = wf.run()
        # Two hold 4000 MB each of the 8000 MB GPU at the same time...
        first, second = door.arrive(), door.arrive()
        while_full = cluster.events(run_id)
        gpu_now = cluster.nodes()[cluster.gpu.node_id]["available"]["gpus"]["0"]
        # ...and the third starts only once one of them is done.
        Door.let_through(first)
        third = door.arrive()
        Door.let_through(second)
        Door.let_through(third)
        messages = wf.get_results(run_id, verbose=False, timeout=WAIT)
    finally:
        door.close()

    assert [m["type"] for m in while_full].count("start_task") == 2
    assert gpu_now["gpu_mem_available"] == 0
    results = finished(messages)
    assert len(results) == 3
    assert all(r["node"] == cluster.gpu.node_id and r["cuda"] == "0" for r in results.values())
    assert all(starts(messages, t.task_id)[0]["gpu_ids"] == [0] for t in tasks)
    order = [(m["type"], m["data"]["task_id"]) for m in messages if "task_id" in m["data"]]
    last = max(tasks, key=lambda t: order.index(("start_task", t.task_id)))
    assert order.index(("start_task", last.task_id)) > min(
        order.index(("finish_task", t.task_id)) for t in tasks if t is not last
    )
    spans = sorted((r["start"], r["end"]) for r in results.values())
    assert spans[0][1] > spans[1][0]  # the first two overlapped
    assert spans[2][0] >= min(spans[0][1], spans[1][1])  # the third waited for one of them


def test_disconnect_stops_new_placements_and_lets_running_tasks_finish(
    cluster: Cluster,
) -> None:
    door = Door()
    try:
        running = cluster.client.create_workflow()
        held = running.add_task(square_behind_door, inputs={"door": door.port, "x": 7})
        held_run = running.run()
        conn = door.arrive()
        (start,) = starts(cluster.events(held_run), held.task_id)
        assert start["node_id"] == cluster.cpu.node_id

        reply = cluster.api.post("/disconnect_worker", json={"node_id": cluster.cpu.node_id})
        assert reply.json() == {"status": "success"}
        # Two CPUs: the drained node had room, but the task goes to the GPU worker instead.
        later = cluster.client.create_workflow()
        moved = later.add_task(two_cpus, inputs={"x": 1})
        moved_outputs = later.get_outputs(later.run(), timeout=WAIT)
        state = cluster.nodes()[cluster.cpu.node_id]["state"]

        Door.let_through(conn)
        held_outputs = running.get_outputs(held_run, timeout=WAIT)
    finally:
        door.close()
        # Registering it again makes it take tasks again (and restores it for later tests).
        node = cluster.nodes()[cluster.cpu.node_id]
        cluster.api.post(
            "/connect_worker",
            json={
                "node_ip": node["node_ip"],
                "node_id": node["node_id"],
                "resources": {"cpu": 2, "cpu_mem": node["total"]["memory_bytes"] // MB},
            },
        ).raise_for_status()
    back = cluster.client.create_workflow()
    returned = back.add_task(two_cpus, inputs={"x": 3})
    back_outputs = back.get_outputs(back.run(), timeout=WAIT)

    assert state == "draining"
    assert moved_outputs[moved] == {"node": cluster.gpu.node_id}
    assert held_outputs[held] == {"node": cluster.cpu.node_id, "y": 49}
    assert back_outputs[returned] == {"node": cluster.cpu.node_id}
    assert cluster.nodes()[cluster.cpu.node_id]["state"] == "alive"


# --- failures -------------------------------------------------------------------------------


def test_killing_a_workers_process_group_mid_run_loses_nothing(cluster: Cluster) -> None:
    """Worker ``big`` (5 CPUs: the most free, so 2-CPU tasks prefer it) runs two tasks when
    its whole process group is killed: one that fits elsewhere completes there, with the
    right result and its dependant after it; one that only ``big`` could run fails its run
    with a message that says so."""
    big = WorkerProcess(f"127.0.0.1:{cluster.head.port}", "--num-cpus", "5").wait_ready()
    door = Door()
    try:
        wf = cluster.client.create_workflow()
        square = wf.add_task(square_behind_door, inputs={"door": door.port, "x": 12})
        after = wf.add_task(plus_one, inputs={"y": square.outputs["y"]})
        run_id = wf.run()
        first_try = door.arrive()
        only_big = cluster.client.create_workflow()
        stranded = only_big.add_task(three_cpus_behind_door, inputs={"door": door.port})
        stranded_run = only_big.run()
        stranded_conn = door.arrive()
        placed = [
            starts(cluster.events(run_id), square.task_id)[0]["node_id"],
            starts(cluster.events(stranded_run), stranded.task_id)[0]["node_id"],
        ]
        session = big.session()

        killed_at = time.monotonic()
        os.killpg(big.proc.pid, signal.SIGKILL)
        second_try = door.arrive(timeout=REDISPATCH_WITHIN + 30)
        redispatched_after = time.monotonic() - killed_at
        Door.let_through(second_try)
        messages = wf.get_results(run_id, verbose=False, timeout=WAIT)
        with pytest.raises(TaskFailedError) as failure:
            only_big.get_outputs(stranded_run, timeout=WAIT)
        first_try.close()
        stranded_conn.close()
    finally:
        door.close()
        big.kill()
    nodes = cluster.nodes()
    _, survivors = psutil.wait_procs(session, timeout=30)

    print(f"killed node: its task ran again {redispatched_after:.1f}s after the kill")
    assert placed == [big.node_id, big.node_id]
    assert redispatched_after < REDISPATCH_WITHIN, redispatched_after
    results = finished(messages)
    assert results[square.task_id]["y"] == 144 and results[after.task_id] == {"z": 145}
    assert results[square.task_id]["node"] in (cluster.cpu.node_id, cluster.gpu.node_id)
    # The client is told where the task runs now; it is not sent back to the node that lost
    # it while that node is still dying.
    first_start, second_start = starts(messages, square.task_id)
    assert first_start["node_id"] == big.node_id and "attempt" not in first_start
    assert second_start["node_id"] == results[square.task_id]["node"]
    assert second_start["attempt"] == 2
    assert messages[-1]["type"] == "finish_workflow" and messages[-1]["data"]["success"]
    assert failure.value.error.type == "ResourceUnavailableError"
    assert "no node can ever provide" in failure.value.error.message
    assert nodes[big.node_id]["state"] == "dead"
    assert survivors == [], [p.info for p in survivors]


# --- security -------------------------------------------------------------------------------


def test_a_head_bound_remotely_requires_the_token(cluster: Cluster) -> None:
    with pytest.raises(LatticeUsageError, match="token"), LatticeClient(cluster.head.url) as anon:
        anon.nodes()
    refused = httpx.post(
        f"{cluster.head.url}/connect_worker",
        json={"node_ip": "10.0.0.9", "node_id": "f" * 56, "resources": {"cpu": 64}},
    )
    assert refused.status_code == 401
    assert refused.json()["detail"] == "missing or wrong Lattice token"
    ws_url = f"ws://127.0.0.1:{cluster.head.port}/get_workflow_res/w/r"
    with connect(ws_url) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert "f" * 56 not in cluster.nodes()

    no_token = WorkerProcess(f"127.0.0.1:{cluster.head.port}", "--num-cpus", "1", token=None)
    code = no_token.wait(timeout=WAIT)
    no_token.kill()
    assert code == 2, no_token.output
    assert "the head refused this worker: POST" in no_token.output
    assert "missing or wrong Lattice token" in no_token.output
    assert "--token or LATTICE_TOKEN" in no_token.output
    assert "joining the Ray cluster" not in no_token.output  # refused before starting Ray

    with pytest.raises(LatticeUsageError, match="without a token"):
        ServerSettings(host="0.0.0.0").check()
    ServerSettings(host="0.0.0.0", token=TOKEN).check()


# --- a worker with an address of its own ----------------------------------------------------


@dataclass(frozen=True)
class Namespace:
    name: str
    #: the veth end outside the namespace, and its address; taking it down cuts the link
    host_if: str
    host_ip: str
    ns_ip: str


@contextlib.contextmanager
def network_namespace() -> Iterator[Namespace]:
    """A network namespace wired to this one by a veth pair. Skips the test (saying why)
    where namespaces cannot be made (not root, no iproute2)."""
    if shutil.which("ip") is None or shutil.which("ss") is None:
        pytest.skip("needs the `ip` and `ss` commands (iproute2) for a network namespace")
    tag = os.getpid() % 100000
    subnet = f"10.213.{tag % 250 + 1}"
    ns = Namespace(f"lattice{tag}", f"lth{tag}", f"{subnet}.1", f"{subnet}.2")
    ns_if = f"ltn{tag}"
    steps = [
        ["ip", "netns", "add", ns.name],
        ["ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", ns.name],
        ["ip", "addr", "add", f"{ns.host_ip}/24", "dev", ns.host_if],
        ["ip", "link", "set", ns.host_if, "up"],
        ["ip", "-n", ns.name, "addr", "add", f"{ns.ns_ip}/24", "dev", ns_if],
        ["ip", "-n", ns.name, "link", "set", ns_if, "up"],
        ["ip", "-n", ns.name, "link", "set", "lo", "up"],
        ["ip", "-n", ns.name, "route", "add", "default", "via", ns.host_ip],
    ]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False, timeout=30)
            if done.returncode != 0:
                pytest.skip(f"cannot make a network namespace ({' '.join(step)}): {done.stderr}")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", ns.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)


def listening_ports(netns: str) -> set[int]:
    """TCP ports listened on in ``netns``, other than on loopback (``ss`` in the namespace:
    psutil reads sockets through this process's own namespace and would see none)."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "ss", "-Hltn"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    ports = set()
    for line in done.stdout.splitlines():
        host, _, port = line.split()[3].rpartition(":")
        if host not in ("127.0.0.1", "[::1]", "[::ffff:127.0.0.1]"):
            ports.add(int(port))
    return ports


def test_a_worker_with_its_own_address_runs_tasks_and_is_given_up_when_cut_off(
    cluster: Cluster,
) -> None:
    """A worker in its own network namespace joins by its own address (as from another
    machine), its Ray node listening only in the port range it was given; a task only it can
    run (4 CPUs) lands there. Then its link is cut while it runs
    a task that fits elsewhere too (it has the most free CPUs, so that task went there): Ray never fails that task (its calls just hang), so the head
    gives it up when the node is declared dead and runs it on another node."""
    with network_namespace() as ns:
        remote = WorkerProcess(
            f"{ns.host_ip}:{cluster.head.port}",
            *("--num-cpus", "5", "--node-ip", ns.ns_ip, "--ray-node-ports", "20000-20099"),
            netns=ns.name,
        )
        door = Door(host=ns.host_ip)  # reachable from the namespace and from here
        try:
            remote.wait_ready()
            wf = cluster.client.create_workflow()
            big = wf.add_task(four_cpus, inputs={"x": 1})
            messages = wf.get_results(wf.run(), verbose=False, timeout=WAIT)
            listed = cluster.nodes()[remote.node_id]
            ports = listening_ports(ns.name)

            cut = cluster.client.create_workflow()
            held = cut.add_task(
                square_behind_remote_door, inputs={"door": door.port, "host": ns.host_ip, "x": 5}
            )
            cut_run = cut.run()
            first_try = door.arrive()
            placed = starts(cluster.events(cut_run), held.task_id)[0]["node_id"]
            cut_at = time.monotonic()
            subprocess.run(["ip", "link", "set", ns.host_if, "down"], check=True, timeout=30)
            second_try = door.arrive(timeout=REDISPATCH_WITHIN + 30)
            given_up_after = time.monotonic() - cut_at
            Door.let_through(second_try)
            cut_messages = cut.get_results(cut_run, verbose=False, timeout=WAIT)
            first_try.close()
        finally:
            door.close()
            remote.kill()
    state = cluster.nodes()[remote.node_id]["state"]

    assert remote.node_ip == ns.ns_ip and listed["node_ip"] == ns.ns_ip
    (start,) = starts(messages, big.task_id)
    assert (start["node_id"], start["node_ip"]) == (remote.node_id, ns.ns_ip)
    assert finished(messages)[big.task_id] == {"node": remote.node_id}
    # Every port the node opens to others is in the range a firewall would open.
    assert ports and all(20000 <= port <= 20099 for port in ports), ports
    print(f"cut-off node: its task ran again {given_up_after:.1f}s after the cut")
    assert placed == remote.node_id
    assert given_up_after < REDISPATCH_WITHIN, given_up_after
    result = finished(cut_messages)[held.task_id]
    assert result["y"] == 25 and result["node"] in (cluster.cpu.node_id, cluster.gpu.node_id)
    assert cut_messages[-1]["data"]["success"] is True
    assert state == "dead"


# --- stopping a worker (last: it stops the shared ``cpu`` worker) ----------------------------


def test_ctrl_c_drains_the_worker_lets_its_task_finish_and_takes_its_node_down(
    cluster: Cluster,
) -> None:
    worker = cluster.cpu
    door = Door()
    try:
        wf = cluster.client.create_workflow()
        held = wf.add_task(square_behind_door, inputs={"door": door.port, "x": 3})
        run_id = wf.run()
        conn = door.arrive()
        session = worker.session()
        # Ctrl-C in a terminal signals the whole foreground process group, Ray node included.
        os.killpg(worker.proc.pid, signal.SIGINT)
        worker.wait_for_line("deregistered from")
        later = cluster.client.create_workflow()
        moved = later.add_task(two_cpus, inputs={"x": 1})
        moved_outputs = later.get_outputs(later.run(), timeout=WAIT)
        Door.let_through(conn)
        outputs = wf.get_outputs(run_id, timeout=WAIT)
        code = worker.wait(timeout=WAIT)
    finally:
        door.close()
    _, survivors = psutil.wait_procs(session, timeout=30)
    messages = cluster.events(run_id)

    assert outputs[held] == {"node": worker.node_id, "y": 9}
    assert len(starts(messages, held.task_id)) == 1  # finished where it ran, not re-run
    assert moved_outputs[moved] == {"node": cluster.gpu.node_id}
    assert code == 0, worker.output
    assert "Traceback" not in worker.output, worker.output
    assert survivors == []


def test_a_worker_that_ran_light_tasks_leaves_without_waiting_out_its_drain(
    cluster: Cluster,
) -> None:
    # The task host (a Ray actor) the light task left on the node would keep Ray draining it
    # for the full --drain-timeout; the head lets go of it once the node is disconnected.
    roomy = WorkerProcess(
        f"127.0.0.1:{cluster.head.port}",
        *("--num-cpus", "1", "--memory", "200000", "--drain-timeout", "120"),
    ).wait_ready()
    try:
        wf = cluster.client.create_workflow()
        light = wf.add_task(light_on_the_roomy_node, inputs={"x": 1})
        outputs = wf.get_outputs(wf.run(), timeout=WAIT)
        os.killpg(roomy.proc.pid, signal.SIGINT)
        code = roomy.wait(timeout=60)  # well inside the 120 s drain
    finally:
        roomy.kill()

    assert outputs[light] == {"node": roomy.node_id}
    assert code == 0, roomy.output
