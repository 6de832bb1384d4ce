"""A worker's Ray node is in the cluster before the worker has registered what it offers.

The worker (``lattice start --worker``, its GPU declared by flag) reaches the head through a
:class:`RegistrationGate`, a loopback proxy that holds its ``POST /connect_worker`` until the
test lets it through. In that moment Ray lists the node (the worker has already found its
NodeID through it) but the head knows only Ray's view of it: one GPU of unknown memory. GPU
tasks submitted then must wait for the registration, not fail with ResourceUnavailableError,
and ``GET /nodes`` must show the node as ``joining``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lattice import LatticeClient, task
from tests.integration.server_fixture import HeadProcess, free_port
from tests.integration.test_distributed import (
    TOKEN,
    WAIT,
    WorkerProcess,
    finished,
    ray_node_id,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


@task(inputs=["x"], outputs=["node", "cuda"], resources={"gpu": 1, "gpu_mem": 4000, "cpu": 0.1})
def on_half_a_gpu(params: dict[str, Any]) -> dict[str, Any]:
    return {"node": ray_node_id(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1})
def probe(params: dict[str, Any]) -> int:
    return int(params["x"]) + 1


class RegistrationGate:
    """A TCP proxy on loopback to the head's API that holds the first request carrying
    ``POST /connect_worker`` until :meth:`release`. Everything else passes at once."""

    MARK = b"POST /connect_worker"

    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self.held = threading.Event()
        self._released = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self._upstream, timeout=WAIT)
            for src, dst, gated in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(target=self._pump, args=(src, dst, gated), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket, gated: bool) -> None:
        src.settimeout(WAIT)
        with contextlib.suppress(OSError):
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if gated and self.MARK in chunk and not self._released.is_set():
                    self.held.set()
                    if not self._released.wait(WAIT):
                        break
                dst.sendall(chunk)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._released.set()
        self._server.close()
        for thread in self._threads:
            thread.join(WAIT)


@pytest.fixture
def head() -> Iterator[HeadProcess]:
    from tests.conftest import require_module

    require_module("ray", "a Ray head for workers")
    port, ray_port = free_port(), free_port()
    args = ["start", "--head", "--port", str(port), "--token", TOKEN, "--executor", "ray"]
    # A grace far longer than the test: the node must wait for its registration, not for it.
    args += ["--ray-port", str(ray_port), "--num-cpus", "1", "--join-grace", "600"]
    process = HeadProcess(args, port=port, env={"LATTICE_TOKEN": ""})
    process.start(timeout=180)
    try:
        yield process
    finally:
        process.stop(timeout=90)


def test_gpu_tasks_submitted_before_a_worker_registers_wait_for_it(head: HeadProcess) -> None:
    gate = RegistrationGate(head.port or 0)
    worker = WorkerProcess(
        f"127.0.0.1:{gate.port}", "--num-cpus", "2", "--num-gpus", "1", "--gpu-mem", "8000"
    )
    client = LatticeClient(head.url, token=TOKEN, timeout=WAIT)
    try:
        # The worker's node is in Ray (it found its NodeID there) and its registration waits.
        assert gate.held.wait(WAIT), worker.output
        # The scheduler has taken the node in, from Ray's view: joining.
        head.wait_for_line("counts as joining until it registers", WAIT)
        wf = client.create_workflow()
        gpu_tasks = [wf.add_task(on_half_a_gpu, inputs={"x": i}) for i in range(3)]
        gpu_run = wf.run()
        # The scheduler takes messages in order: once a later run's task has finished, it
        # has decided about the GPU tasks (failed them, or kept them waiting).
        later = client.create_workflow()
        later_task = later.add_task(probe, inputs={"x": 1})
        later_messages = later.get_results(later.run(), verbose=False, timeout=WAIT)
        joining = [n for n in client.nodes() if n["state"] == "joining"]

        gate.release()
        worker.wait_ready()
        messages = wf.get_results(gpu_run, verbose=False, timeout=WAIT)
        registered = {n["node_id"]: n for n in client.nodes()}[worker.node_id]
    finally:
        client.close()
        gate.close()
        worker.stop()

    assert finished(later_messages)[later_task.task_id] == {"y": 2}
    assert [n["node_id"] for n in joining] == [worker.node_id]
    # Ray's view: one GPU, its memory unknown (0 MB) until the worker says.
    assert joining[0]["total"]["gpus"] == {"0": {"gpu_mem_total": 0, "gpu_mem_available": 0}}
    assert not [m for m in messages if m["type"] == "task_exception"], messages
    results = finished(messages)
    assert {results[t.task_id]["node"] for t in gpu_tasks} == {worker.node_id}
    assert {results[t.task_id]["cuda"] for t in gpu_tasks} == {"0"}
    assert messages[-1]["data"]["success"] is True
    assert registered["state"] == "alive"
    assert registered["total"]["gpus"]["0"]["gpu_mem_total"] == 8000
