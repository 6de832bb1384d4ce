"""SandboxRunner against real child processes: real rlimits, real seccomp, real Landlock.

Every limit is hit for real (a bounded fork bomb, a 2 GB allocation, a spinning loop), and
the runner must turn each into a clear error while this process, the test's "server", goes
on running tasks.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

from lattice.core.resource.node import SelectedNode
from lattice.exceptions import LatticeInputError, LatticeUsageError
from lattice.executor.base import TaskKind, TaskOutcome, TaskSubmission
from lattice.executor.runner import execute
from lattice.executor.sandbox import forkserver, verdict
from lattice.executor.sandbox.cgroup import process_limit_unavailable
from lattice.executor.sandbox.docker import docker_available
from lattice.executor.sandbox.runner import SandboxRunner
from lattice.executor.sandbox.seccomp_policy import seccomp_unavailable
from lattice.executor.sandbox.wire import ChildEnd, SealedValue, decode_outcome
from lattice.vocabulary import SandboxLevel, SandboxSpec, TaskResourceRequirements
from tests.conftest import unless_available

# The child cannot import this module by name under every level (the seccomp level hides
# files outside the import path): ship the test functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SUBPROCESS = SandboxLevel.SUBPROCESS
SECCOMP = SandboxLevel.SECCOMP


def _level_param(level: SandboxLevel) -> Any:
    return pytest.param(
        level, id=level.value, marks=unless_available(SandboxRunner.unavailable(level))
    )


LEVELS = [_level_param(SUBPROCESS), _level_param(SECCOMP)]


def needs_seccomp(test: Callable[..., None]) -> Callable[..., None]:
    """Skips ``test`` where seccomp is missing, except in CI (see unless_available)."""
    for mark in unless_available(seccomp_unavailable()):
        test = mark(test)
    return test


def make_submission(
    fn: Callable[..., Any],
    *,
    key: str = "k",
    inputs: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
    sandbox: SandboxSpec | None = None,
) -> TaskSubmission:
    return TaskSubmission(
        task_key=key,
        task_name="t",
        kind=TaskKind.CODE,
        code=cloudpickle.dumps(fn),
        requirements=TaskResourceRequirements(),
        node=SelectedNode("local", "127.0.0.1"),
        outputs=("out",),
        user_inputs={"x": 1} if inputs is None else inputs,
        upstream_inputs={} if upstream is None else upstream,
        sandbox=sandbox,
    )


def run(runner: SandboxRunner, fn: Callable[..., Any], **kwargs: Any) -> TaskOutcome:
    return runner.run(make_submission(fn, **kwargs))


def failed(outcome: TaskOutcome) -> tuple[str, str]:
    assert outcome.error is not None, f"expected a failure, got {outcome.value!r}"
    return outcome.error.type, outcome.error.message


@pytest.fixture(params=LEVELS)
def level(request: pytest.FixtureRequest) -> SandboxLevel:
    level: SandboxLevel = request.param
    return level


@pytest.fixture
def make_runner() -> Iterator[Callable[..., SandboxRunner]]:
    """``make_runner(level, **limits)``: a runner whose fork server is stopped afterwards."""
    made: list[SandboxRunner] = []

    def make(level: SandboxLevel = SandboxLevel.NONE, **limits: Any) -> SandboxRunner:
        made.append(SandboxRunner(SandboxSpec(level=level, **limits)))
        return made[-1]

    yield make
    for runner in made:
        runner.close()


@pytest.fixture
def runner(level: SandboxLevel, make_runner: Callable[..., SandboxRunner]) -> SandboxRunner:
    return make_runner(level)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port on loopback that a task may try to reach."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock
    finally:
        sock.close()


# --- tasks (module-level so they read like the tasks users write) ---------------------------


def add_one(p: dict[str, Any]) -> dict[str, Any]:
    return {"out": p["x"] + 1, "shape": [1, "a", None, 2.5, {"k": True}]}


def raise_value_error(p: dict[str, Any]) -> None:
    raise ValueError(f"bad input {p['x']}")


def connect_to(p: dict[str, Any]) -> str:
    with socket.create_connection(("127.0.0.1", p["port"]), timeout=10):
        return "connected"


def fork_bomb(p: dict[str, Any]) -> int:
    children = 0
    for _ in range(10000):
        if os.fork() == 0:
            os._exit(0)  # unreaped, each child stays a zombie and keeps counting
        children += 1
    return children


def allocate_2gb(p: dict[str, Any]) -> int:
    return len(bytearray(2 * 1024**3))


def spin(p: dict[str, Any]) -> None:
    while True:
        pass


def read_secret(p: dict[str, Any]) -> Any:
    return {"out": {"secret": os.environ.get("LATTICE_TEST_SECRET"), "env": sorted(os.environ)}}


def kill_parent(p: dict[str, Any]) -> str:
    os.kill(os.getppid(), signal.SIGKILL)
    threading.Event().wait()  # the supervisor is gone; this process dies with it
    return "unreachable"


def where_am_i(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "out": {"cwd": os.getcwd(), "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd"))}
    }


def wait_at_gate(p: dict[str, Any]) -> None:
    with open(p["gate"], "rb") as gate:
        gate.read()  # the test holds the writing end open and never writes


# --- ordinary behaviour ---------------------------------------------------------------------


def test_normal_task_gives_the_same_outcome_as_in_process(runner: SandboxRunner) -> None:
    sub = make_submission(add_one, inputs={"x": 41})
    outcome = runner.run(sub)
    assert outcome.ok, outcome.error
    assert outcome.value == execute(sub, set_gpu_env=False).value
    assert outcome.value == {"out": 42, "shape": [1, "a", None, 2.5, {"k": True}]}


def test_values_json_cannot_hold_stay_sealed_in_a_sandboxed_server(runner: SandboxRunner) -> None:
    outcome = run(runner, lambda p: {"out": (p["x"], {3, 4}), "n": 1})
    assert outcome.ok, outcome.error
    sealed = outcome.value["out"]
    assert isinstance(sealed, SealedValue)
    assert outcome.value["n"] == 1
    assert pickle.loads(pickle.dumps(sealed)) == sealed  # pickling does not open it
    assert sealed.open() == (1, {3, 4})


def test_values_come_back_open_when_the_server_default_is_none(
    level: SandboxLevel, make_runner: Callable[..., SandboxRunner]
) -> None:
    runner = make_runner()
    outcome = run(runner, lambda p: (p["x"], b"raw"), sandbox=SandboxSpec(level=level))
    assert outcome.ok, outcome.error
    assert outcome.value == {"out": (1, b"raw")}


def test_a_result_cannot_run_code_in_the_server(runner: SandboxRunner, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    def booby_trapped(p: dict[str, Any]) -> dict[str, Any]:
        class Trap:
            def __reduce__(self) -> Any:
                code = f"open({p['marker']!r}, 'w').write('ran in the unpickler')"
                return (exec, (code,))

        return {"out": Trap()}

    outcome = run(runner, booby_trapped, inputs={"marker": str(marker)})
    assert outcome.ok, outcome.error
    assert isinstance(outcome.value["out"], SealedValue)
    assert not marker.exists(), "the server unpickled what the task sent"
    outcome.value["out"].open()  # what a client, trusting the task, would do
    assert marker.exists()


@pytest.mark.parametrize(
    "raw",
    [
        b"[1, 2]",
        b'{"value": {"__lattice_pickle__": 5}}',
        b'{"value": {"__lattice_pickle__": "not base64!"}}',
        b'{"error": {"type": 1}}',
        b'{"value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"\xff",
    ],
)
def test_malformed_outcomes_are_refused_as_data(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_outcome(raw, open_values=False)


def test_sealed_upstream_values_are_opened_inside_the_child(runner: SandboxRunner) -> None:
    upstream = {"y": SealedValue(cloudpickle.dumps((5, 6)))}
    outcome = run(runner, lambda p: type(p["y"]).__name__ + str(sum(p["y"])), upstream=upstream)
    assert outcome.value == {"out": "tuple11"}


def test_exception_keeps_type_message_and_traceback(runner: SandboxRunner) -> None:
    outcome = run(runner, raise_value_error, inputs={"x": 7})
    kind, message = failed(outcome)
    assert (kind, message) == ("ValueError", "bad input 7")
    assert outcome.error is not None
    assert "raise_value_error" in outcome.error.traceback
    assert "ValueError: bad input 7" in outcome.error.traceback
    assert outcome.error.pickled is not None
    assert isinstance(pickle.loads(base64.b64decode(outcome.error.pickled)), ValueError)


def test_child_gets_a_clean_environment(
    runner: SandboxRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATTICE_TEST_SECRET", "s3cr3t")
    outcome = run(runner, read_secret)
    assert outcome.ok, outcome.error
    assert outcome.value["out"]["secret"] is None
    allowed = {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONPATH", "CUDA_VISIBLE_DEVICES", "LC_CTYPE"}
    assert set(outcome.value["out"]["env"]) <= allowed


def test_child_has_its_own_workdir_and_no_inherited_fds(runner: SandboxRunner) -> None:
    leaked = open(__file__, "rb")  # noqa: SIM115 - must be open while the task runs
    try:
        outcome = run(runner, where_am_i)
    finally:
        leaked.close()
    assert outcome.ok, outcome.error
    info = outcome.value["out"]
    assert Path(info["cwd"]).name.startswith("lattice-task-")
    assert not os.path.exists(info["cwd"]), "the task's directory must be removed afterwards"
    # stdin, stdout, stderr, the result pipe, and the descriptor listdir itself used
    assert len(info["fds"]) <= 5 and info["fds"][:4] == [0, 1, 2, 3]


# --- network ----------------------------------------------------------------------------------


def test_network_is_allowed_under_subprocess(
    listener: socket.socket, make_runner: Callable[..., SandboxRunner]
) -> None:
    runner = make_runner(SUBPROCESS)
    outcome = run(runner, connect_to, inputs={"port": listener.getsockname()[1]})
    assert outcome.value == {"out": "connected"}


@needs_seccomp
def test_network_is_refused_under_seccomp(
    listener: socket.socket, make_runner: Callable[..., SandboxRunner]
) -> None:
    runner = make_runner(SECCOMP)
    outcome = run(runner, connect_to, inputs={"port": listener.getsockname()[1]})
    kind, message = failed(outcome)
    assert kind == "PermissionError"
    assert "seccomp sandbox refuses network sockets" in message


# --- limits -----------------------------------------------------------------------------------


def test_fork_bomb_is_stopped_by_the_process_limit(
    level: SandboxLevel, make_runner: Callable[..., SandboxRunner]
) -> None:
    reason = process_limit_unavailable()
    if reason:
        pytest.skip(reason)
    runner = make_runner(level, max_processes=32)
    kind, message = failed(run(runner, fork_bomb))
    assert kind == verdict.PROCESS_LIMIT
    assert "limit of 32 processes" in message


def test_allocation_past_the_memory_limit_fails_the_task(
    level: SandboxLevel, make_runner: Callable[..., SandboxRunner]
) -> None:
    runner = make_runner(level, memory_limit_mb=256)
    kind, message = failed(run(runner, allocate_2gb))
    assert kind == verdict.MEMORY_LIMIT
    assert "memory limit of 256 MB" in message


def test_spinning_past_the_cpu_time_limit_fails_the_task(
    level: SandboxLevel, make_runner: Callable[..., SandboxRunner]
) -> None:
    runner = make_runner(level, cpu_time_limit=1)
    kind, message = failed(run(runner, spin))
    assert kind == verdict.CPU_TIME_LIMIT
    assert "CPU time limit of 1 s" in message


def test_open_files_and_file_size_limits(
    level: SandboxLevel, make_runner: Callable[..., SandboxRunner]
) -> None:
    runner = make_runner(level, max_open_files=32, max_file_size_mb=1)

    def open_many(p: dict[str, Any]) -> int:
        return len([open(os.devnull) for _ in range(100)])

    def write_big(p: dict[str, Any]) -> int:
        with open("big.bin", "wb") as f:
            return f.write(b"x" * (2 * 1024 * 1024))

    assert failed(run(runner, open_many))[0] == verdict.OPEN_FILES_LIMIT
    assert failed(run(runner, write_big))[0] == verdict.FILE_SIZE_LIMIT


def test_a_task_cannot_raise_its_own_limits(
    level: SandboxLevel, make_runner: Callable[..., SandboxRunner]
) -> None:
    runner = make_runner(level, memory_limit_mb=256)

    def raise_limit(p: dict[str, Any]) -> Any:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    kind, _ = failed(run(runner, raise_limit))
    assert kind == "ValueError"  # "not allowed to raise maximum limit", also for root


# --- the server survives ----------------------------------------------------------------------


def test_a_task_that_kills_its_parent_does_not_reach_the_server(
    level: SandboxLevel, make_runner: Callable[..., SandboxRunner]
) -> None:
    runner = make_runner(level)
    kind, message = failed(run(runner, kill_parent))
    if level is SECCOMP:
        assert kind == "PermissionError"  # signals outside the task are refused
    else:
        assert kind == verdict.CHILD_DIED
        assert "supervisor was killed by SIGKILL" in message
    assert run(runner, add_one).ok  # and this process goes on serving


def test_normal_task_still_succeeds_after_every_kind_of_failure(
    level: SandboxLevel, make_runner: Callable[..., SandboxRunner]
) -> None:
    runner = make_runner(level, memory_limit_mb=256, cpu_time_limit=1, max_processes=32)
    failures = [raise_value_error, allocate_2gb, spin, kill_parent, lambda p: os._exit(3)]
    if process_limit_unavailable() is None:
        failures.append(fork_bomb)
    for fn in failures:
        assert not run(runner, fn).ok
    outcome = run(runner, add_one, inputs={"x": 1})
    assert outcome.value == {"out": 2, "shape": [1, "a", None, 2.5, {"k": True}]}


def test_a_child_that_exits_without_a_result_is_reported(runner: SandboxRunner) -> None:
    kind, message = failed(run(runner, lambda p: os._exit(3)))
    assert kind == verdict.CHILD_DIED
    assert "exited with code 3 without a result" in message


FORK_SERVER_MODULE = forkserver.__name__


def test_cancel_kills_a_running_task(
    runner: SandboxRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The gate is a FIFO on the import path (readable at every level): opening its writing end
    # returns only once the task has opened the reading end, i.e. once the task is running.
    monkeypatch.syspath_prepend(str(tmp_path))
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    outcomes: list[TaskOutcome] = []
    worker = threading.Thread(
        target=lambda: outcomes.append(
            run(runner, wait_at_gate, key="c", inputs={"gate": str(gate)})
        )
    )
    worker.start()
    with open(gate, "wb"):
        assert runner.cancel("c")
        worker.join(timeout=60)
    assert not worker.is_alive()
    assert failed(outcomes[0])[0] == "TaskCancelledError"
    assert not runner.cancel("c"), "nothing is left to cancel"
    leftovers = []
    # Under this process: fork servers, under them supervisors (possibly still exiting),
    # under those the task's processes, which must all be gone once run() returned. Other
    # children of this process (a Ray head started by another test) are not the runner's.
    for server in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if FORK_SERVER_MODULE not in server.cmdline():
                continue
            for supervisor in server.children():
                with contextlib.suppress(psutil.NoSuchProcess):
                    leftovers += supervisor.children(recursive=True)
    assert leftovers == [], "cancel must leave no process of the task behind"


def test_many_tasks_at_once_each_get_their_own_result(runner: SandboxRunner) -> None:
    from concurrent.futures import ThreadPoolExecutor

    subs = [make_submission(add_one, key=f"k{i}", inputs={"x": i}) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(runner.run, subs))
    assert [o.value["out"] if o.ok else o.error for o in outcomes] == [i + 1 for i in range(16)]


def test_cancel_of_an_unknown_task_is_false(runner: SandboxRunner) -> None:
    assert runner.cancel("nope") is False


# --- seccomp policy ---------------------------------------------------------------------------


@needs_seccomp
def test_ordinary_python_runs_under_seccomp(make_runner: Callable[..., SandboxRunner]) -> None:
    def ordinary(p: dict[str, Any]) -> dict[str, Any]:
        import asyncio
        import json
        import math
        import subprocess
        import tempfile
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            squares = list(pool.map(lambda i: i * i, range(8)))

        async def nap() -> str:
            await asyncio.sleep(0)
            return "async"

        with tempfile.NamedTemporaryFile("w+") as f:
            f.write("scratch")
            f.flush()
        result = {
            "threads": sum(squares),
            "json": json.loads(json.dumps({"a": [1, 2]})),
            "math": math.isclose(math.sqrt(2) ** 2, 2),
            "asyncio": asyncio.run(nap()),
            "exec": subprocess.run(["true"], check=False).returncode,
        }
        try:
            import numpy
        except ImportError:
            return {"out": result}
        result["numpy"] = float(numpy.linalg.norm(numpy.ones((64, 64)) @ numpy.ones(64)))
        return {"out": result}

    outcome = run(make_runner(SECCOMP), ordinary)
    assert outcome.ok, outcome.error
    value = outcome.value["out"]
    assert value["threads"] == 140 and value["json"] == {"a": [1, 2]} and value["math"]
    assert value["asyncio"] == "async" and value["exec"] == 0
    if "numpy" in value:
        assert value["numpy"] == pytest.approx(64 * 8)


@needs_seccomp
def test_ptrace_kills_the_task_with_a_forbidden_system_call(
    make_runner: Callable[..., SandboxRunner],
) -> None:
    def trace_parent(p: dict[str, Any]) -> int:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.ptrace(16, os.getppid(), 0, 0))  # PTRACE_ATTACH

    kind, message = failed(run(make_runner(SECCOMP), trace_parent))
    assert kind == verdict.FORBIDDEN_SYSCALL
    assert "seccomp policy forbids" in message


@needs_seccomp
def test_foreign_abi_system_calls_are_killed(make_runner: Callable[..., SandboxRunner]) -> None:
    def x32_getpid(p: dict[str, Any]) -> int:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.syscall(0x40000000 | 39))  # getpid through the x32 ABI

    kind, _ = failed(run(make_runner(SECCOMP), x32_getpid))
    assert kind == verdict.FORBIDDEN_SYSCALL


@needs_seccomp
def test_signal_rules_stand_in_where_landlock_cannot_scope_signals() -> None:
    """Kernels before 6.12 cannot scope signals with Landlock; the seccomp rules then allow
    signals to the task's own process only."""
    # A fresh interpreter, not a fork of this one: this process has Ray's gRPC threads, and a
    # forked copy of them can crash the child before it gets to the test.
    child = textwrap.dedent(
        """
        import os, sys
        from lattice.executor.sandbox.seccomp_policy import build_filter

        build_filter(os.getpid(), restrict_signals=True).load()
        os.kill(os.getpid(), 0)
        try:
            os.kill(int(sys.argv[1]), 0)
        except PermissionError:
            sys.exit(0)
        sys.exit(1)
        """
    )
    done = subprocess.run([sys.executable, "-c", child, str(os.getpid())], timeout=60)
    assert done.returncode == 0


@needs_seccomp
def test_the_server_is_out_of_reach_under_seccomp(
    tmp_path: Path, make_runner: Callable[..., SandboxRunner]
) -> None:
    server = os.getpid()
    outside = tmp_path / "outside.txt"
    outside.write_text("server data")

    def unshare_user_namespace() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER; os.unshare is Python >= 3.12
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

    def probe(p: dict[str, Any]) -> dict[str, Any]:
        results = {}
        attempts = {
            "signal": lambda: os.kill(p["server"], 0),
            "environ": lambda: Path(f"/proc/{p['server']}/environ").read_bytes(),
            "read": lambda: Path(p["outside"]).read_text(),
            "write": lambda: Path(p["outside"]).write_text("x"),
            "unix": lambda: socket.socket(socket.AF_UNIX).connect("/nonexistent"),
            "namespace": unshare_user_namespace,
        }
        for name, attempt in attempts.items():
            try:
                attempt()
                results[name] = "allowed"
            except OSError as exc:
                results[name] = type(exc).__name__
        return {"out": results}

    outcome = run(
        make_runner(SECCOMP),
        probe,
        inputs={"server": server, "outside": str(outside)},
    )
    assert outcome.ok, outcome.error
    assert set(outcome.value["out"].values()) == {"PermissionError"}, outcome.value
    assert outside.read_text() == "server data"


# --- configuration ----------------------------------------------------------------------------


def test_effective_spec_is_never_weaker_than_the_server_default() -> None:
    runner = SandboxRunner(
        SandboxSpec(
            level=SECCOMP if seccomp_unavailable() is None else SUBPROCESS,
            memory_limit_mb=512,
            cpu_time_limit=10,
        )
    )
    server_level = runner.default.level
    weaker = runner.effective_spec(
        make_submission(
            add_one,
            sandbox=SandboxSpec(level=SandboxLevel.NONE, memory_limit_mb=4096, cpu_time_limit=60),
        )
    )
    assert weaker.level is server_level
    assert (weaker.memory_limit_mb, weaker.cpu_time_limit) == (512, 10)
    stricter = runner.effective_spec(
        make_submission(
            add_one,
            sandbox=SandboxSpec(level=SandboxLevel.DOCKER, memory_limit_mb=128, max_processes=8),
        )
    )
    assert stricter.level is SandboxLevel.DOCKER
    assert (stricter.memory_limit_mb, stricter.cpu_time_limit, stricter.max_processes) == (
        128,
        10,
        8,
    )
    defaults = runner.effective_spec(make_submission(add_one))
    assert defaults.max_open_files and defaults.max_file_size_mb and defaults.max_processes


def test_a_none_default_runs_unsandboxed_tasks_in_process(
    make_runner: Callable[..., SandboxRunner],
) -> None:
    runner = make_runner()
    sub = make_submission(lambda p: os.getpid())
    assert not runner.applies(sub)
    assert runner.run(sub).value == {"out": os.getpid()}


@pytest.mark.parametrize(
    "bad", [{"memory_limit_mb": 0}, {"cpu_time_limit": -1}, {"max_processes": 2.5}, {"level": "vm"}]
)
def test_bad_specs_are_rejected_by_name(bad: dict[str, Any]) -> None:
    with pytest.raises(
        LatticeInputError, match=next(iter(bad)) if "level" not in bad else "sandbox level"
    ):
        SandboxSpec(**bad)


def test_runner_pickles_as_its_configuration(runner: SandboxRunner) -> None:
    clone = cloudpickle.loads(cloudpickle.dumps(runner))
    assert clone.default == runner.default
    assert clone.run(make_submission(add_one)).ok


def test_docker_level_fails_at_once_without_an_engine(
    make_runner: Callable[..., SandboxRunner],
) -> None:
    reason = docker_available()
    if reason is None:
        pytest.skip(
            "a Docker engine is reachable here; tests/integration/test_sandbox_docker.py covers it"
        )
    with pytest.raises(LatticeUsageError, match="docker"):
        SandboxRunner(SandboxSpec(level=SandboxLevel.DOCKER))
    outcome = run(
        make_runner(SUBPROCESS),
        add_one,
        sandbox=SandboxSpec(level=SandboxLevel.DOCKER),
    )
    kind, message = failed(outcome)
    assert kind == verdict.SANDBOX_ERROR and reason in message


# --- verdicts (pure) --------------------------------------------------------------------------


def test_verdicts_name_the_limit() -> None:
    spec = SandboxSpec(level=SECCOMP, cpu_time_limit=2, memory_limit_mb=64).with_defaults()
    by_signal = {
        signal.SIGXCPU: verdict.CPU_TIME_LIMIT,
        signal.SIGSYS: verdict.FORBIDDEN_SYSCALL,
        signal.SIGXFSZ: verdict.FILE_SIZE_LIMIT,
        signal.SIGSEGV: verdict.CHILD_DIED,
    }
    for sig, kind in by_signal.items():
        assert verdict.explain_death(spec, ChildEnd(signal=sig)).type == kind
    spent = ChildEnd(signal=signal.SIGKILL, cpu_seconds=2.99)
    assert verdict.explain_death(spec, spent).type == verdict.CPU_TIME_LIMIT
    oom = verdict.explain_death(spec, ChildEnd(signal=signal.SIGKILL))
    assert oom.type == verdict.CHILD_DIED and "memory limit of 64 MB" in oom.message
    lost = verdict.explain_lost_supervisor(-signal.SIGKILL, "")
    assert "supervisor was killed by SIGKILL" in lost.message
