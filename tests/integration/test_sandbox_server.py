"""The sandbox levels through the real server: ``lattice start --head --sandbox LEVEL``.

A head per level this machine provides (subprocess, seccomp) runs hostile tasks sent by the
real client: one opens a network connection, one fork-bombs, one allocates far past the
memory limit, one spins the CPU forever, one reads a secret from the server's environment,
one kills its parent. Each must end as docs/sandbox.md says for that level, fail only itself,
and leave the server serving ordinary tasks whose results flow as without a sandbox. A Ray
head shows the same inside Ray workers; an in-process server whose default is ``none`` shows
a task choosing a stricter level and a lower limit for itself.

Every task connects only to loopback ports this module opens.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from lattice import LatticeClient, task
from lattice.client.core.decorator import TaskFunction
from lattice.config.settings import ServerSettings
from lattice.executor.sandbox import verdict
from lattice.executor.sandbox.cgroup import process_limit_unavailable
from lattice.executor.sandbox.docker import docker_available
from lattice.executor.sandbox.runner import SandboxRunner
from lattice.vocabulary import SandboxLevel
from tests.conftest import skip_or_fail, unless_available
from tests.integration.server_fixture import HeadProcess, InProcessServer, free_port

WAIT = 60.0
SECRET_NAME = "LATTICE_TEST_SECRET"
SECRET = f"s3cr3t-{uuid.uuid4().hex}"
CPU_LIMIT = 2  # --task-cpu-time-limit of every head here
MEMORY_LIMIT = 256  # --task-memory-limit
MAX_PROCESSES = 512  # the sandbox's default process limit (no CLI flag changes it)
SECCOMP_REFUSES = "seccomp sandbox refuses"
#: what a sandboxed task's environment may hold (docs/sandbox.md: nothing of the server's)
SECCOMP_LEVEL = SandboxLevel.SECCOMP
CLEAN_ENV = {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONPATH", "CUDA_VISIBLE_DEVICES", "LC_CTYPE"}
LIGHT = {"cpu": 0.1}  # every hostile task runs at once, whatever the core count


def _level(level: SandboxLevel) -> Any:
    reason = SandboxRunner.unavailable(level)
    why = f"{level.value} is not available here: {reason}" if reason else None
    return pytest.param(level.value, id=level.value, marks=unless_available(why))


# --- tasks (module level, shipped by value like any user's own module) ----------------------


@task(inputs=["port"], outputs=["out"], resources=LIGHT)
def connect_to(p: dict[str, Any]) -> str:
    with socket.create_connection(("127.0.0.1", p["port"]), timeout=10):
        return "connected"


@task(outputs=["out"], resources=LIGHT)
def fork_bomb(p: dict[str, Any]) -> int:
    forks = 0
    for _ in range(2000):  # bounded, in case no limit stops it
        if os.fork() == 0:
            os._exit(0)  # unreaped, each child stays a zombie and keeps counting
        forks += 1
    return forks


@task(outputs=["out"], resources=LIGHT)
def allocate_4gb(p: dict[str, Any]) -> int:
    return len(bytearray(4 * 1024**3))


@task(outputs=["out"], resources=LIGHT)
def spin_forever(p: dict[str, Any]) -> None:
    while True:
        pass


@task(outputs=["out"], resources=LIGHT)
def read_secret(p: dict[str, Any]) -> dict[str, Any]:
    # A dict result is taken as the outputs themselves: name the one output.
    return {"out": {"secret": os.environ.get(SECRET_NAME), "env": sorted(os.environ)}}


@task(outputs=["out"], resources=LIGHT)
def kill_parent(p: dict[str, Any]) -> str:
    os.kill(os.getppid(), signal.SIGKILL)
    threading.Event().wait()  # the supervisor is gone; this process dies with it
    return "unreachable"


@task(inputs=["targets"], outputs=["out"], resources=LIGHT)
def probe(p: dict[str, Any]) -> dict[str, Any]:
    """Try to reach what lies outside the sandbox; name what happened to each attempt."""
    targets = p["targets"]

    def tcp() -> None:
        socket.create_connection((targets["tcp_host"], targets["tcp_port"]), timeout=5).close()

    attempts = {
        "server_environ": lambda: Path(f"/proc/{targets['server_pid']}/environ").read_bytes(),
        "signal_server": lambda: os.kill(targets["server_pid"], 0),
        "unix_socket": lambda: socket.socket(socket.AF_UNIX).close(),
        "tcp": tcp,
    }
    if targets.get("token_file"):
        attempts["token_file"] = lambda: Path(targets["token_file"]).read_bytes()
    found: dict[str, Any] = {}
    for name, attempt in attempts.items():
        try:
            attempt()
            found[name] = "allowed"
        except OSError as exc:
            found[name] = type(exc).__name__
    found["fds"] = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    return {"out": found}


@task(inputs=["x"], outputs=["out"], resources=LIGHT)
def add_one(p: dict[str, Any]) -> int:
    return p["x"] + 1


@task(inputs=["n"], outputs=["arr", "pair", "meta"], resources=LIGHT)
def produce(p: dict[str, Any]) -> dict[str, Any]:
    n = p["n"]
    return {
        "arr": np.arange(n, dtype=np.int32) * 2,
        "pair": (n, "two"),
        "meta": {"n": n, "tags": ["a", None, 2.5]},
    }


@task(inputs=["arr", "pair", "meta"], outputs=["total", "kinds"], resources=LIGHT)
def consume(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "total": int(p["arr"].sum()) + p["pair"][0] + p["meta"]["n"],
        "kinds": [type(p[k]).__name__ for k in ("arr", "pair", "meta")],
    }


@task(inputs=["x"], outputs=["out"], resources=LIGHT)
def fail_loudly(p: dict[str, Any]) -> None:
    raise ValueError(f"no good value: {p['x']}")


# The same bodies, asking for more isolation than a server whose default is none.
connect_seccomp = task(inputs=["port"], outputs=["out"], resources=LIGHT, sandbox="seccomp")(
    connect_to.func
)
read_secret_seccomp = task(outputs=["out"], resources=LIGHT, sandbox="seccomp")(read_secret.func)
spin_for_1s = task(outputs=["out"], resources=LIGHT, cpu_time_limit=1)(spin_forever.func)


# --- helpers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ended:
    """How one task of a run ended: its ``finish_task`` or ``task_exception`` message data."""

    name: str
    data: dict[str, Any]
    failed: bool

    @property
    def result(self) -> Any:
        assert not self.failed, f"{self.name} failed: {self.data['error']}"
        return self.data["result"]["out"]

    def error(self, kind: str, says: str) -> dict[str, Any]:
        """The task's error, after checking its type and that its message says ``says``."""
        assert self.failed, f"{self.name} succeeded with {self.data['result']!r}"
        error: dict[str, Any] = self.data["error"]
        assert error["type"] == kind, error
        assert says in error["message"], error
        return error


def run_tasks(
    client: LatticeClient, tasks: dict[str, tuple[TaskFunction, dict[str, Any]]]
) -> dict[str, Ended]:
    """Run ``tasks`` (name -> function, inputs) as independent branches of one workflow."""
    wf = client.create_workflow()
    added = {
        name: wf.add_task(fn, inputs=inputs, task_name=name) for name, (fn, inputs) in tasks.items()
    }
    messages = wf.get_results(wf.run(), verbose=False, timeout=WAIT)
    assert messages[-1]["type"] == "finish_workflow", messages[-1]
    names = {t.task_id: name for name, t in added.items()}
    ended = {
        names[m["data"]["task_id"]]: Ended(
            names[m["data"]["task_id"]], m["data"], m["type"] == "task_exception"
        )
        for m in messages
        if m["type"] in ("finish_task", "task_exception")
    }
    assert set(ended) == set(tasks), f"tasks that never ended: {set(tasks) - set(ended)}"
    return ended


def assert_serving(url: str, client: LatticeClient) -> None:
    """The server answers /health and still runs an ordinary task."""
    response = httpx.get(f"{url}/health", timeout=WAIT)
    assert response.status_code == 200, response.text
    assert run_tasks(client, {"normal": (add_one, {"x": 41})})["normal"].result == 42


def start_head(*args: str, ready_within: float = 60.0) -> HeadProcess:
    """``lattice start --head ARGS`` on a free port, with the secret in its environment."""
    port = free_port()
    head = HeadProcess(
        ["start", "--head", "--port", str(port), *args], port=port, env={SECRET_NAME: SECRET}
    )
    return head.start(timeout=ready_within)


def ray_token_file() -> str | None:
    """Ray's token file (~/.ray/auth_token) when this machine has one."""
    token = Path.home() / ".ray" / "auth_token"
    return str(token) if token.is_file() else None


def server_has_the_secret(head: HeadProcess) -> None:
    # The control: the secret a task must not see is really in the server's environment.
    assert head.proc is not None
    assert f"{SECRET_NAME}={SECRET}".encode() in Path(f"/proc/{head.proc.pid}/environ").read_bytes()


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    """A loopback TCP port a task may try to reach; the only address any task connects to."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as sock:
        yield int(sock.getsockname()[1])


# --- a head per level -----------------------------------------------------------------------


@dataclass(frozen=True)
class LevelHead:
    level: str
    process: HeadProcess
    client: LatticeClient


@pytest.fixture(
    scope="module", params=[_level(SandboxLevel.SUBPROCESS), _level(SandboxLevel.SECCOMP)]
)
def head(request: pytest.FixtureRequest) -> Iterator[LevelHead]:
    """``lattice start --head --executor local --sandbox LEVEL`` with CPU and memory limits."""
    process = start_head(
        "--executor",
        "local",
        "--sandbox",
        request.param,
        "--task-cpu-time-limit",
        str(CPU_LIMIT),
        "--task-memory-limit",
        str(MEMORY_LIMIT),
    )
    try:
        with LatticeClient(process.url, timeout=WAIT) as client:
            yield LevelHead(request.param, process, client)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def hostile(head: LevelHead, listener: int) -> dict[str, Ended]:
    """Every hostile task, as independent branches of one run, beside a normal task."""
    assert head.process.proc is not None
    server_has_the_secret(head.process)
    targets = {
        "server_pid": head.process.proc.pid,
        "tcp_host": "127.0.0.1",
        "tcp_port": listener,
        "token_file": ray_token_file(),
    }
    return run_tasks(
        head.client,
        {
            "network": (connect_to, {"port": listener}),
            "fork_bomb": (fork_bomb, {}),
            "memory": (allocate_4gb, {}),
            "cpu": (spin_forever, {}),
            "secret": (read_secret, {}),
            "kill_parent": (kill_parent, {}),
            "probe": (probe, {"targets": targets}),
            "normal": (add_one, {"x": 1}),
        },
    )


def test_network_is_allowed_at_subprocess_and_refused_at_seccomp(
    head: LevelHead, hostile: dict[str, Ended]
) -> None:
    if head.level == "subprocess":
        # Documented: subprocess contains accidents, not attacks; it leaves the network open.
        assert hostile["network"].result == "connected"
    else:
        hostile["network"].error("PermissionError", SECCOMP_REFUSES + " network sockets")


def test_fork_bomb_is_stopped_by_the_process_limit(
    head: LevelHead, hostile: dict[str, Ended]
) -> None:
    reason = process_limit_unavailable()
    if reason is not None:
        pytest.skip(f"the process limit cannot apply here: {reason}")
    error = hostile["fork_bomb"].error(
        verdict.PROCESS_LIMIT, f"limit of {MAX_PROCESSES} processes and threads"
    )
    assert "in fork_bomb" in error["traceback"]


def test_allocation_far_past_the_memory_limit_fails_that_task(
    hostile: dict[str, Ended],
) -> None:
    error = hostile["memory"].error(
        verdict.MEMORY_LIMIT, f"exceeded its memory limit of {MEMORY_LIMIT} MB"
    )
    assert "MemoryError" in error["message"] and "in allocate_4gb" in error["traceback"]


def test_spinning_forever_is_stopped_by_the_cpu_time_limit(hostile: dict[str, Ended]) -> None:
    hostile["cpu"].error(verdict.CPU_TIME_LIMIT, f"CPU time limit of {CPU_LIMIT} s")


def test_the_servers_secret_is_not_in_the_tasks_environment(hostile: dict[str, Ended]) -> None:
    seen = hostile["secret"].result
    assert seen["secret"] is None
    assert set(seen["env"]) <= CLEAN_ENV, seen["env"]


def test_a_task_that_kills_its_parent_fails_alone(
    head: LevelHead, hostile: dict[str, Ended]
) -> None:
    if head.level == "subprocess":
        # Its parent is an expendable supervisor, not the server.
        hostile["kill_parent"].error(verdict.CHILD_DIED, "supervisor was killed by SIGKILL")
    else:
        hostile["kill_parent"].error("PermissionError", SECCOMP_REFUSES)
    assert head.process.running


def test_the_server_is_out_of_reach(head: LevelHead, hostile: dict[str, Ended]) -> None:
    found = hostile["probe"].result
    # stdin, stdout, stderr, the result pipe (and the descriptor listdir used): nothing of
    # the server's sockets at any level.
    assert found.pop("fds")[:4] == [0, 1, 2, 3]
    if head.level == "seccomp":
        refused = {name: "PermissionError" for name in found}
        assert found == refused, found
    else:
        # Documented: subprocess does not fence the server's user (network, files, signals).
        assert found["tcp"] == "allowed" and found["unix_socket"] == "allowed"


def test_other_tasks_are_unaffected_and_the_server_keeps_serving(
    head: LevelHead, hostile: dict[str, Ended]
) -> None:
    assert hostile["normal"].result == 2
    assert head.process.running
    assert_serving(head.process.url, head.client)


def test_results_flow_as_without_a_sandbox(head: LevelHead) -> None:
    wf = head.client.create_workflow()
    made = wf.add_task(produce, inputs={"n": 4})
    used = wf.add_task(consume, inputs=dict(made.outputs))
    bad = wf.add_task(fail_loudly, inputs={"x": 7})
    run_id = wf.run()

    messages = wf.get_results(run_id, verbose=False, timeout=WAIT)

    finished = {
        m["data"]["task_id"]: m["data"]["result"] for m in messages if m["type"] == "finish_task"
    }
    out = finished[made.task_id]
    assert isinstance(out["arr"], np.ndarray) and out["arr"].dtype == np.int32
    np.testing.assert_array_equal(out["arr"], [0, 2, 4, 6])
    assert out["pair"] == (4, "two") and type(out["pair"]) is tuple
    assert out["meta"] == {"n": 4, "tags": ["a", None, 2.5]}
    # Downstream, in its own sandbox, the upstream values arrive with their types.
    assert finished[used.task_id] == {"total": 12 + 4 + 4, "kinds": ["ndarray", "tuple", "dict"]}
    (failure,) = [m["data"] for m in messages if m["type"] == "task_exception"]
    assert failure["task_id"] == bad.task_id
    error = failure["error"]
    assert (error["type"], error["message"]) == ("ValueError", "no good value: 7")
    assert "in fail_loudly" in error["traceback"]
    assert 'raise ValueError(f"no good value' in error["traceback"]
    assert messages[-1]["type"] == "finish_workflow" and messages[-1]["data"]["success"] is False


# --- a task choosing more isolation than its server's default -------------------------------


@pytest.mark.parametrize(
    "seccomp",
    [pytest.param("seccomp", marks=unless_available(SandboxRunner.unavailable(SECCOMP_LEVEL)))],
)
def test_a_task_may_ask_for_a_stricter_level_and_lower_limits(
    listener: int, monkeypatch: pytest.MonkeyPatch, seccomp: str
) -> None:
    # This server runs tasks in its own threads (default level none), so the control tasks see
    # this process's environment and network.
    monkeypatch.setenv(SECRET_NAME, SECRET)
    with (
        InProcessServer(ServerSettings(executor="local")) as server,
        LatticeClient(server.url, timeout=WAIT) as client,
    ):
        ended = run_tasks(
            client,
            {
                "plain_network": (connect_to, {"port": listener}),
                "seccomp_network": (connect_seccomp, {"port": listener}),
                "plain_secret": (read_secret, {}),
                "seccomp_secret": (read_secret_seccomp, {}),
                "spin_1s": (spin_for_1s, {}),
            },
        )
        assert_serving(server.url, client)

    assert ended["plain_network"].result == "connected"
    ended["seccomp_network"].error("PermissionError", SECCOMP_REFUSES + " network sockets")
    assert ended["plain_secret"].result["secret"] == SECRET
    assert ended["seccomp_secret"].result["secret"] is None
    ended["spin_1s"].error(verdict.CPU_TIME_LIMIT, "CPU time limit of 1 s")


def test_a_task_asking_for_a_lower_cpu_limit_gets_it_under_a_head_default(
    head: LevelHead,
) -> None:
    ended = run_tasks(head.client, {"spin_1s": (spin_for_1s, {})})
    ended["spin_1s"].error(verdict.CPU_TIME_LIMIT, "CPU time limit of 1 s")


# --- docker without an engine ---------------------------------------------------------------


def test_docker_level_without_an_engine_fails_at_once_saying_why() -> None:
    reason = docker_available()
    if reason is None:
        pytest.skip("a Docker engine is reachable here: the level starts (test_sandbox_docker.py)")
    port = free_port()
    head = HeadProcess(
        ["start", "--head", "--executor", "local", "--sandbox", "docker", "--port", str(port)],
        port=port,
    )
    head.launch()
    try:
        code = head.wait(30)
    finally:
        head.stop(signal.SIGKILL)  # only if it is still running, i.e. the test failed

    assert code != 0
    assert f"sandbox level 'docker' cannot be used here: {reason}" in head.output
    assert "Application startup complete" not in head.output
    assert "Traceback" not in head.output, head.output


# --- inside Ray workers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_head() -> Iterator[tuple[HeadProcess, int]]:
    """``lattice start --head --executor ray --sandbox seccomp`` with its own Ray head."""
    from tests.conftest import require_module

    require_module("ray", "the Ray head")
    reason = SandboxRunner.unavailable(SandboxLevel.SECCOMP)
    if reason is not None:
        skip_or_fail(f"seccomp is not available here: {reason}")
    ray_port = free_port()
    head = start_head(
        "--executor",
        "ray",
        "--ray-port",
        str(ray_port),
        "--num-cpus",
        "2",
        "--sandbox",
        "seccomp",
        "--task-cpu-time-limit",
        str(CPU_LIMIT),
        "--task-memory-limit",
        str(MEMORY_LIMIT),
        ready_within=180,
    )
    try:
        yield head, ray_port
    finally:
        head.stop(timeout=90)


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.mark.ray
def test_ray_workers_keep_the_sandbox(ray_head: tuple[HeadProcess, int], listener: int) -> None:
    head, ray_port = ray_head
    assert head.proc is not None
    server_has_the_secret(head)
    # The controls: outside the sandbox the GCS port answers and the token file is readable.
    gcs_host = next(
        (
            h
            for h in ("127.0.0.1", socket.gethostbyname(socket.gethostname()))
            if reachable(h, ray_port)
        ),
        None,
    )
    assert gcs_host is not None, f"the Ray GCS port {ray_port} answers on no local address"
    token = ray_token_file()
    if token is not None:
        assert Path(token).read_bytes(), "the token file is readable outside the sandbox"
    targets = {
        "server_pid": head.proc.pid,
        "tcp_host": gcs_host,
        "tcp_port": ray_port,
        "token_file": token,
    }
    with LatticeClient(head.url, timeout=WAIT) as client:
        assert client.health()["executor"] == "ray"
        ended = run_tasks(
            client,
            {
                "network": (connect_to, {"port": listener}),
                "secret": (read_secret, {}),
                "memory": (allocate_4gb, {}),
                "kill_parent": (kill_parent, {}),
                "probe": (probe, {"targets": targets}),
                "normal": (add_one, {"x": 1}),
                "produce": (produce, {"n": 3}),
            },
        )
        assert_serving(head.url, client)

    ended["network"].error("PermissionError", SECCOMP_REFUSES + " network sockets")
    seen = ended["secret"].result
    assert seen["secret"] is None
    assert not [k for k in seen["env"] if k.startswith("RAY_")], seen["env"]
    ended["memory"].error(verdict.MEMORY_LIMIT, f"memory limit of {MEMORY_LIMIT} MB")
    ended["kill_parent"].error("PermissionError", SECCOMP_REFUSES)
    found = ended["probe"].result
    assert found.pop("fds")[:4] == [0, 1, 2, 3]
    assert found == {name: "PermissionError" for name in found}, found
    assert ("token_file" in found) == (token is not None)
    assert ended["normal"].result == 2
    made = ended["produce"].data["result"]
    np.testing.assert_array_equal(made["arr"], [0, 2, 4])
    assert made["pair"] == (3, "two")
    assert head.running
