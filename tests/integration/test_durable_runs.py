"""Durable runs: a real head killed by SIGKILL and started again on the same data directory.

Tasks write a side-effect file (one line per execution) so the tests prove what ran, and
wait at a :class:`Listener` where the test wants the head killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import httpx
import pytest

from lattice import LatticeClient, LatticeConnectionError, ReconnectPolicy, task
from tests.integration.server_fixture import HeadProcess, free_port, start_local_head
from tests.integration.submissions import TIMEOUT
from tests.integration.waiting_tasks import Listener

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _record(directory: str, name: str) -> None:
    """One line per execution: the attempt and the idempotency key it ran as."""
    from lattice import current_attempt

    attempt = current_attempt()
    with open(Path(directory) / f"{name}.ran", "a") as f:
        f.write(f"{attempt.attempt} {attempt.idempotency_key}\n")


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


def wait_for_finish(wf: Any, run_id: str, task_id: str) -> None:
    """Until a client is sent ``task_id``'s finish: with a durable store it is sent only
    once committed, so from then on a crash cannot take it back."""
    for message in wf.stream(run_id, timeout=TIMEOUT):
        if message["type"] == "finish_task" and message["data"]["task_id"] == task_id:
            return


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
            wait_for_finish(wf, run_id, a.task_id)
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
    # b's code saw its attempt, and one key for both attempts.
    key = f"{run_id}/{b.task_id}"
    assert (effects / "held.ran").read_text().splitlines() == [f"1 {key}", f"2 {key}"]
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


# --- clients across a restart ---------------------------------------------------------------


class Waiter:
    """``get_outputs`` of a run on a thread of its own: what it returned or raised."""

    def __init__(self, url: str, workflow_id: str, run_id: str, policy: ReconnectPolicy) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._client = LatticeClient(url, timeout=TIMEOUT, reconnect=policy)
        self._workflow = self._client.get_workflow(workflow_id)
        self._run_id = run_id
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._workflow.get_outputs(self._run_id, TIMEOUT)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc
        finally:
            self._client.close()

    def join(self) -> None:
        self._thread.join(TIMEOUT * 2)
        assert not self._thread.is_alive(), "get_outputs neither returned nor raised"


class Releaser:
    """A thread that lets each task waiting or arriving at ``listener`` through."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._listener.release_all()
        while not self._stop.is_set():
            self._listener.accept(1)
            self._listener.release_all()

    def stop(self) -> None:
        self._stop.set()
        # A blocked accept() does not wake when the socket closes: knock once instead.
        socket.create_connection(("127.0.0.1", self._listener.port)).close()
        self._thread.join(TIMEOUT)


def start_held_chain(
    client: LatticeClient, effects: Path, listener: Listener
) -> tuple[Any, str, list[Any]]:
    wf = client.create_workflow()
    a = wf.add_task(first, inputs={"dir": str(effects), "x": 2})
    b = wf.add_task(held, inputs={"dir": str(effects), "port": listener.port, "y": a.outputs["y"]})
    c = wf.add_task(last, inputs={"dir": str(effects), "y": b.outputs["y"]})
    run_id = wf.run()
    assert listener.accept(1) == ["held"]
    wait_for_finish(wf, run_id, a.task_id)
    return wf, run_id, [a, b, c]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_client_waiting_for_outputs_gets_every_one_after_the_head_restarts(
    tmp_path: Path, listener: Listener, sig: int
) -> None:
    data, effects = tmp_path / "data", tmp_path / "effects"
    effects.mkdir()
    port = free_port()
    head = start_local_head(data_dir=data, port=port)
    try:
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            wf, run_id, (a, b, c) = start_held_chain(client, effects, listener)
        waiter = Waiter(head.url, wf.workflow_id, run_id, ReconnectPolicy(60, 0.05, 0.5))
    finally:
        assert head.proc is not None
        head.proc.send_signal(sig)
    # From now on every attempt of b is let through: a head stopped by SIGTERM exits only
    # once its task threads return (it records nothing of them: the run stays unfinished).
    releaser = Releaser(listener)
    code = head.wait(TIMEOUT)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), head.output[-2000:]
    if sig == signal.SIGTERM:
        assert "Traceback" not in head.output
    head = start_local_head(data_dir=data, port=port)
    try:
        waiter.join()
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            messages = events_of(client, wf.workflow_id, run_id)
    finally:
        head.stop()
        releaser.stop()
    assert waiter.error is None, waiter.error
    assert set(waiter.result) == {a.task_id, b.task_id, c.task_id}
    assert waiter.result[c.task_id]["y"] == 50
    assert ran(effects)["first"] == 1 and ran(effects)["last"] == 1
    finishes = Counter(m["data"]["task_id"] for m in messages if m["type"] == "finish_task")
    assert finishes == {a.task_id: 1, b.task_id: 1, c.task_id: 1}
    assert [m["type"] for m in messages].count("finish_workflow") == 1


def test_a_client_waiting_for_outputs_raises_when_the_head_dies_for_good(
    tmp_path: Path, listener: Listener
) -> None:
    effects = tmp_path / "effects"
    effects.mkdir()
    head = start_local_head(data_dir=tmp_path / "data")
    try:
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            wf, run_id, _ = start_held_chain(client, effects, listener)
        waiter = Waiter(head.url, wf.workflow_id, run_id, ReconnectPolicy(3, 0.05, 0.1))
    finally:
        kill(head)
    waiter.join()
    assert waiter.result is None, "returned outputs of a run that never finished"
    assert isinstance(waiter.error, LatticeConnectionError)
    assert run_id in str(waiter.error) and head.url in str(waiter.error)
    assert "3 reconnections" in str(waiter.error)


# --- on Ray ---------------------------------------------------------------------------------


def start_ray_head(data: Path, port: int) -> HeadProcess:
    from tests.conftest import require_module

    require_module("ray", "the Ray head")
    args = ["start", "--head", "--executor", "ray", "--port", str(port)]
    args += ["--ray-port", str(free_port()), "--num-cpus", "2"]
    return HeadProcess(args, port=port, data_dir=data).start(timeout=180)


def kill_with_its_ray(head: HeadProcess) -> None:
    """SIGKILL the head and every process it started, in their own process groups too (its
    Ray node runs in one of its own): what a machine crash does, and nothing is left over."""
    import psutil

    assert head.proc is not None
    groups = {os.getpgid(head.proc.pid)}
    for child in psutil.Process(head.proc.pid).children(recursive=True):
        try:
            groups.add(os.getpgid(child.pid))
        except ProcessLookupError:
            continue  # it ended by itself meanwhile
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            continue
    head.wait(TIMEOUT)


def test_on_ray_a_run_killed_mid_task_resumes_and_finished_tasks_never_run_again(
    tmp_path: Path, listener: Listener
) -> None:
    data, effects = tmp_path / "data", tmp_path / "effects"
    effects.mkdir()
    port = free_port()
    head = start_ray_head(data, port)
    try:
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            wf, run_id, (a, b, c) = start_held_chain(client, effects, listener)
    finally:
        kill_with_its_ray(head)
    listener.waiting.clear()
    head = start_ray_head(data, port)
    try:
        assert listener.accept(1) == ["held"]
        listener.release_all()
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            outputs = client.get_workflow(wf.workflow_id).get_outputs(run_id, timeout=TIMEOUT)
            messages = events_of(client, wf.workflow_id, run_id)
    finally:
        head.stop(timeout=90)
    assert outputs[c.task_id]["y"] == 50
    assert ran(effects) == {"first": 1, "held": 2, "last": 1}
    finishes = Counter(m["data"]["task_id"] for m in messages if m["type"] == "finish_task")
    assert finishes == {a.task_id: 1, b.task_id: 1, c.task_id: 1}


def test_a_run_whose_code_is_gone_from_the_store_fails_on_restart_saying_why(
    tmp_path: Path, listener: Listener
) -> None:
    data, effects = tmp_path / "data", tmp_path / "effects"
    effects.mkdir()
    port = free_port()
    head = start_local_head(data_dir=data, port=port)
    try:
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            wf, run_id, _ = start_held_chain(client, effects, listener)
    finally:
        kill(head)
    conn = sqlite3.connect(data / "lattice.db")
    with conn:
        conn.execute("DELETE FROM code_blobs")
    conn.close()
    head = start_local_head(data_dir=data, port=port)
    try:
        run = httpx.get(f"{head.url}/runs/{run_id}", timeout=TIMEOUT).json()["run"]
        # Its workflow's definition cannot be rebuilt either: it is not served.
        assert httpx.get(f"{head.url}/get_workflow_tasks/{wf.workflow_id}").status_code == 404
    finally:
        head.stop()
    assert run["status"] == "failed"
    errors = [t["error"] for t in run["tasks"].values() if t["status"] == "failed"]
    assert len(errors) == 2 and all(e["type"] == "CodeUnavailableError" for e in errors)
    assert "is missing from the store" in errors[0]["message"]
    assert "cannot resume" in head.output
    assert ran(effects) == {"first": 1, "held": 1}


@task(inputs=["dir", "x"], outputs=["y"], resources={"cpu": 0.5}, batch_size=3, batch_timeout=600)
def batched(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with open(Path(batch[0]["dir"]) / "batched.ran", "a") as f:
        f.write(f"{len(batch)}\n")
    return [{"y": item["x"] * 2} for item in batch]


def test_tasks_in_a_batch_being_collected_when_the_head_dies_run_once_after_it(
    tmp_path: Path,
) -> None:
    """Two of a batch of three are collected (it waits for a third, for ten minutes) when the
    head is killed; after the restart a third run completes the batch."""
    data, effects = tmp_path / "data", tmp_path / "effects"
    effects.mkdir()
    port = free_port()
    head = start_local_head(data_dir=data, port=port)
    runs = []
    try:
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            for x in (1, 2):
                wf = client.create_workflow()
                t = wf.add_task(batched, inputs={"dir": str(effects), "x": x})
                runs.append((wf.workflow_id, wf.run(), t.task_id, x))
    finally:
        kill(head)
    assert ran(effects) == {}
    head = start_local_head(data_dir=data, port=port)
    try:
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            wf = client.create_workflow()
            t = wf.add_task(batched, inputs={"dir": str(effects), "x": 3})
            runs.append((wf.workflow_id, wf.run(), t.task_id, 3))
            for workflow_id, run_id, task_id, x in runs:
                outputs = client.get_workflow(workflow_id).get_outputs(run_id, TIMEOUT)
                assert outputs[task_id]["y"] == 2 * x
                messages = events_of(client, workflow_id, run_id)
                assert [m["type"] for m in messages] == [
                    "start_task",
                    "finish_task",
                    "finish_workflow",
                ]
    finally:
        head.stop()
    # One call, with all three: nothing of the first head's batch ran, nothing ran twice.
    assert (effects / "batched.ran").read_text().splitlines() == ["3"]


@task(inputs=["dir", "y"], outputs=["y"], resources={"cpu": 1.0})
def wide(params: dict[str, Any]) -> dict[str, Any]:
    _record(params["dir"], "wide")
    return {"y": sum(params["y"])}


def test_a_head_killed_between_a_finish_and_its_dependants_start_runs_neither_twice(
    tmp_path: Path, listener: Listener
) -> None:
    """One CPU: a (half) finishes while a held task keeps the other half, so a's dependant,
    which needs the whole CPU, cannot start yet when the head dies."""
    data, effects = tmp_path / "data", tmp_path / "effects"
    effects.mkdir()
    port = free_port()
    head = start_local_head("--num-cpus", "1", data_dir=data, port=port)
    try:
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            wf = client.create_workflow()
            wf.add_task(held, inputs={"dir": str(effects), "port": listener.port, "y": [0]})
            a = wf.add_task(first, inputs={"dir": str(effects), "x": 1})
            b = wf.add_task(wide, inputs={"dir": str(effects), "y": a.outputs["y"]})
            run_id = wf.run()
            listener.accept(1)
            wait_for_finish(wf, run_id, a.task_id)
    finally:
        kill(head)
    assert ran(effects) == {"held": 1, "first": 1}
    listener.waiting.clear()
    head = start_local_head("--num-cpus", "1", data_dir=data, port=port)
    try:
        listener.accept(1)
        listener.release_all()
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            outputs = client.get_workflow(wf.workflow_id).get_outputs(run_id, TIMEOUT)
            messages = events_of(client, wf.workflow_id, run_id)
    finally:
        head.stop()
    assert outputs[b.task_id]["y"] == 3
    assert ran(effects) == {"held": 2, "first": 1, "wide": 1}
    finishes = Counter(m["data"]["task_id"] for m in messages if m["type"] == "finish_task")
    assert set(finishes.values()) == {1} and len(finishes) == 3


def test_a_port_in_use_is_one_line_naming_the_port_and_the_flag(tmp_path: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    head = HeadProcess(
        ["start", "--head", "--executor", "local", "--port", str(port)], data_dir=tmp_path
    )
    try:
        head.launch()
        code = head.wait(TIMEOUT)
    finally:
        head.stop(signal.SIGKILL)
        taken.close()
    assert code == 2
    assert f"lattice: port {port} on 127.0.0.1 is in use" in head.output
    assert "--port" in head.output and "Traceback" not in head.output


def test_deleting_a_workflow_forgets_it_and_its_runs_also_across_a_restart(
    tmp_path: Path, listener: Listener
) -> None:
    data, effects = tmp_path / "data", tmp_path / "effects"
    effects.mkdir()
    port = free_port()
    head = start_local_head(data_dir=data, port=port)
    try:
        with LatticeClient(head.url, timeout=TIMEOUT) as client:
            wf = client.create_workflow()
            wf.add_task(held, inputs={"dir": str(effects), "port": listener.port, "y": [1]})
            run_id = wf.run()
            listener.accept(1)
            busy = httpx.delete(f"{head.url}/workflows/{wf.workflow_id}")
            assert busy.status_code == 409 and run_id in busy.text
            listener.release_all()
            wf.get_outputs(run_id, TIMEOUT)
        assert httpx.delete(f"{head.url}/workflows/{wf.workflow_id}").status_code == 200
        assert httpx.get(f"{head.url}/runs/{run_id}").status_code == 404
        assert httpx.delete(f"{head.url}/workflows/{wf.workflow_id}").status_code == 404
    finally:
        head.stop()
    head = start_local_head(data_dir=data, port=port)
    try:
        assert httpx.get(f"{head.url}/get_workflow_tasks/{wf.workflow_id}").status_code == 404
        assert httpx.get(f"{head.url}/runs/{run_id}").status_code == 404
    finally:
        head.stop()


def test_a_ray_head_stops_the_ray_node_a_killed_head_left_on_its_data_directory(
    tmp_path: Path,
) -> None:
    import psutil

    data = tmp_path / "data"
    head = start_ray_head(data, free_port())
    record = data / "ray-head.json"
    leftover = int(json.loads(record.read_text())["pid"])
    head.stop(signal.SIGKILL)  # the head only: its Ray node runs in a session of its own
    assert psutil.pid_exists(leftover)
    head = start_ray_head(data, free_port())
    try:
        assert f"stopped the Ray head (pid {leftover})" in head.output
        assert not psutil.pid_exists(leftover)
        assert int(json.loads(record.read_text())["pid"]) != leftover
    finally:
        head.stop(timeout=90)
    assert not record.exists()
