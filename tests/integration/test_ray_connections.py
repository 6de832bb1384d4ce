"""Task hosts' connections to the head, and process hosts, on a real local Ray.

* tasks without GPU or sandbox run on task hosts: light ones on threads of a node's shared
  host, the others alone in a process host, reused from task to task;
* once a host has connected back to the head, its tasks go over that connection; outcomes that
  are large or that cannot be pickled come back through Ray as before;
* a task waiting for the output of one sent over a connection is sent when that output
  arrives, or never, if it is cancelled first or the output never comes;
* only a host that knows the executor's key may connect.

Task functions are defined inside the tests so cloudpickle ships them by value. Nothing sleeps
to wait: tasks block on loopback sockets the test controls, and the test blocks on handles and
events.
"""

from __future__ import annotations

import pickle
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest

from lattice.executor.base import PendingOutput, TaskOutcome
from tests.conftest import import_or_fail
from tests.integration.submissions import TIMEOUT, make_submission, run
from tests.integration.waiting_tasks import WAIT_OUTPUTS, Listener, extra_executor, wait_at

import_or_fail("ray", 'the Ray tests (pip install "ray[default]")')
from lattice.executor.large_values import LARGE_VALUE_BYTES  # noqa: E402 (after the check that Ray is there)
from lattice.executor.ray.channel import DONE, RUN, ChannelServer, connect, dumps  # noqa: E402 (after the check that Ray is there)
from lattice.executor.ray.executor import RayExecutor  # noqa: E402 (after the check that Ray is there)
from lattice.executor.ray.handles import ChannelHandle, FollowerHandle, RayHandle  # noqa: E402 (after the check that Ray is there)
from lattice.executor.ray.hosts import HostKind  # noqa: E402 (after the check that Ray is there)
from lattice.executor.ray.payload import StoredValue  # noqa: E402 (after the check that Ray is there)

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def pid(params: dict[str, Any]) -> dict[str, Any]:
    import os

    return {"out": os.getpid()}


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    try:
        yield lst
    finally:
        lst.close()


@pytest.fixture
def connected(ray_executor: RayExecutor) -> RayExecutor:
    """The session's executor once its shared host and a process host have connected."""
    run(ray_executor, make_submission(pid, cpu=0.1))
    run(ray_executor, make_submission(pid, cpu=1))
    for host in ray_executor.task_hosts():
        assert host.link is not None and host.link.connected.wait(TIMEOUT)
    return ray_executor


@pytest.mark.ray
def test_tasks_go_over_the_connections_once_their_hosts_have_connected(
    connected: RayExecutor,
) -> None:
    light = connected.submit(make_submission(pid, cpu=0.1))
    heavy = connected.submit(make_submission(pid, cpu=1))

    assert isinstance(light, ChannelHandle) and light.host.kind is HostKind.SHARED
    assert isinstance(heavy, ChannelHandle) and heavy.host.kind is HostKind.PROCESS
    light_pid, heavy_pid = light.result(TIMEOUT).value["out"], heavy.result(TIMEOUT).value["out"]
    assert light_pid != heavy_pid


@pytest.mark.ray
def test_a_process_host_runs_its_tasks_one_after_another_in_one_process(
    connected: RayExecutor,
) -> None:
    pids = [run(connected, make_submission(pid, cpu=1)).value["out"] for _ in range(3)]

    assert len(set(pids)) == 1  # one at a time: the same idle host each time


@pytest.mark.ray
def test_a_process_host_whose_task_will_not_stop_is_killed_and_replaced(
    listener: Listener,
) -> None:
    def blocked(params: dict[str, Any]) -> dict[str, Any]:
        return wait_at(params["port"])

    with extra_executor(cancel_grace=0.2) as executor:
        handle = executor.submit(
            make_submission(
                blocked, cpu=1, outputs=WAIT_OUTPUTS, user_inputs={"port": listener.port}
            )
        )
        (stuck_pid,) = listener.accept(1)

        assert executor.cancel(handle)
        outcome = handle.result(TIMEOUT)  # its host is killed: a sleep in C cannot be interrupted
        assert outcome.error is not None and outcome.error.type == "TaskCancelledError"
        assert not outcome.lost
        assert run(executor, make_submission(pid, cpu=1)).value["out"] != int(stuck_pid)


@pytest.mark.ray
def test_a_large_output_sent_over_a_connection_stays_in_the_object_store(
    connected: RayExecutor,
) -> None:
    def make(params: dict[str, Any]) -> dict[str, Any]:
        return {"out": b"x" * (params["size"])}

    def measure(params: dict[str, Any]) -> dict[str, Any]:
        return {"out": len(params["blob"])}

    size = LARGE_VALUE_BYTES + 1
    for cpu in (0.1, 1):
        handle = connected.submit(make_submission(make, cpu=cpu, user_inputs={"size": size}))
        assert isinstance(handle, ChannelHandle)
        stored = handle.result(TIMEOUT).value["out"]
        assert isinstance(stored, StoredValue) and stored.load() == b"x" * size

        dependant = make_submission(measure, cpu=cpu, upstream_inputs={"blob": stored})
        sent = connected.submit(dependant)
        assert isinstance(sent, RayHandle)  # it needs the object store
        assert sent.result(TIMEOUT).value == {"out": size}


@pytest.mark.ray
def test_an_output_that_cannot_be_pickled_fails_as_it_would_in_a_ray_call(
    connected: RayExecutor,
) -> None:
    def lock(params: dict[str, Any]) -> dict[str, Any]:
        import threading

        return {"out": threading.Lock()}

    outcome = run(connected, make_submission(lock, cpu=0.1))

    assert outcome.error is not None and not outcome.lost
    assert "lock" in outcome.error.message


@pytest.mark.ray
def test_a_task_waiting_for_an_output_over_a_connection_is_sent_when_it_arrives(
    connected: RayExecutor, listener: Listener
) -> None:
    def first(params: dict[str, Any]) -> dict[str, Any]:
        wait_at(params["port"])
        return {"out": 41}

    def then(params: dict[str, Any]) -> dict[str, Any]:
        return {"out": params["x"] + 1}

    for cpu in (0.1, 1):
        upstream = connected.submit(
            make_submission(first, cpu=cpu, user_inputs={"port": listener.port})
        )
        follower = connected.submit(
            make_submission(then, cpu=cpu, upstream_inputs={"x": PendingOutput(upstream, "out")})
        )
        assert isinstance(follower, FollowerHandle)
        listener.accept(1)
        assert follower.sent is None and not follower.done()  # it waits for the output

        listener.release_all()
        assert follower.result(TIMEOUT).value == {"out": 42}
        assert isinstance(follower.sent, ChannelHandle)


@pytest.mark.ray
def test_a_follower_of_a_failed_task_never_runs(connected: RayExecutor) -> None:
    def fail(params: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("no output")

    def then(params: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("ran on a failed upstream")

    upstream = connected.submit(make_submission(fail, cpu=0.1))
    follower = connected.submit(
        make_submission(then, cpu=0.1, upstream_inputs={"x": PendingOutput(upstream, "out")})
    )
    outcome = follower.result(TIMEOUT)

    assert outcome.error is not None and outcome.error.type == "UpstreamFailed"
    assert isinstance(follower, FollowerHandle) and follower.sent is None


@pytest.mark.ray
def test_a_follower_cancelled_before_its_upstream_ends_is_never_sent(
    connected: RayExecutor, listener: Listener
) -> None:
    def first(params: dict[str, Any]) -> dict[str, Any]:
        wait_at(params["port"])
        return {"out": 1}

    def then(params: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("a cancelled task ran")

    upstream = connected.submit(
        make_submission(first, cpu=0.1, user_inputs={"port": listener.port})
    )
    follower = connected.submit(
        make_submission(then, cpu=0.1, upstream_inputs={"x": PendingOutput(upstream, "out")})
    )
    listener.accept(1)
    delivered: list[TaskOutcome] = []
    follower.add_done_callback(delivered.append)

    assert connected.cancel(follower)
    listener.release_all()
    assert upstream.result(TIMEOUT).value == {"out": 1}
    assert isinstance(follower, FollowerHandle) and follower.sent is None
    assert len(delivered) == 1 and delivered[0].error is not None
    assert delivered[0].error.type == "TaskCancelledError"


@pytest.mark.ray
def test_without_connections_every_host_task_is_a_ray_call() -> None:
    with extra_executor(host_connections=False) as executor:
        handles = [executor.submit(make_submission(pid, cpu=cpu)) for cpu in (0.1, 1)]
        assert all(isinstance(hd, RayHandle) for hd in handles)
        assert all(isinstance(hd.result(TIMEOUT).value["out"], int) for hd in handles)
        assert all(h.link is None for h in executor.task_hosts())


class _Unreachable(ChannelServer):
    """A channel whose hosts are told a port where nobody listens."""

    def __init__(self, bind_ip: str, port: int = 0) -> None:
        super().__init__(bind_ip, port)
        with socket.create_server((bind_ip, 0)) as closed:
            self.address = (bind_ip, closed.getsockname()[1])


@pytest.mark.ray
def test_hosts_that_cannot_connect_still_run_every_task_as_ray_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lattice.executor.ray.executor as ray_executor_module

    monkeypatch.setattr(ray_executor_module, "ChannelServer", _Unreachable)
    with extra_executor() as executor:
        first = [run(executor, make_submission(pid, cpu=cpu)) for cpu in (0.1, 1)]
        hosts = executor.task_hosts()
        for host in hosts:
            assert host.link is not None and host.link.closed.wait(TIMEOUT)
            assert not host.link.connected.is_set()

        handles = [executor.submit(make_submission(pid, cpu=cpu)) for cpu in (0.1, 1)]
        assert all(isinstance(hd, RayHandle) for hd in handles)
        later = [hd.result(TIMEOUT) for hd in handles]
        assert [o.value["out"] for o in later] == [o.value["out"] for o in first]
        assert executor.task_hosts() == hosts  # the same hosts, alive


def test_a_peer_that_cannot_prove_the_key_is_refused() -> None:
    server = ChannelServer("127.0.0.1")
    try:
        link = server.new_link()
        intruder = connect(server.address, b"not the key" * 3, link.link_id)
        with intruder:
            # The head hangs up without reading anything it sent.
            assert intruder.poll(TIMEOUT)
            with pytest.raises(EOFError):
                intruder.recv_bytes()
        assert not link.connected.is_set()

        host = connect(server.address, server.key, link.link_id)
        with host:
            assert link.connected.wait(TIMEOUT)
    finally:
        server.close()


def test_a_peer_that_says_nothing_does_not_hold_up_the_others() -> None:
    server = ChannelServer("127.0.0.1")
    try:
        silent = socket.create_connection(server.address)
        with silent:
            link = server.new_link()
            with connect(server.address, server.key, link.link_id):
                assert link.connected.wait(TIMEOUT)
    finally:
        server.close()


class _Reply:
    """A receiver that records what its link reports."""

    def __init__(self) -> None:
        self.reported = threading.Event()
        self.lost: list[str] = []

    def report(self, outcome: Any) -> None:
        self.reported.set()

    def report_kept(self) -> None:
        self.reported.set()

    def report_lost(self, reason: str) -> None:
        self.lost.append(reason)


def test_closing_a_link_hangs_up_while_its_reader_waits() -> None:
    server = ChannelServer("127.0.0.1")
    try:
        link = server.new_link()
        with connect(server.address, server.key, link.link_id) as host:
            assert link.connected.wait(TIMEOUT)
            # One round trip, so that the link's reader is back waiting for the next frame.
            first, second = _Reply(), _Reply()
            assert link.send_run("a", first, dumps((RUN, "a")))
            assert link.send_run("b", second, dumps((RUN, "b")))
            assert pickle.loads(host.recv_bytes())[1] == "a"
            host.send_bytes(dumps((DONE, "a", dumps(TaskOutcome(value=1)))))
            assert first.reported.wait(TIMEOUT)

            link.close("the host is gone")

            assert second.lost == ["the host is gone"] and not first.lost
            assert host.poll(TIMEOUT)  # the host sees the end though the reader was waiting
            with pytest.raises(EOFError):
                while True:  # the frame for "b" was sent before the end
                    host.recv_bytes()
    finally:
        server.close()
