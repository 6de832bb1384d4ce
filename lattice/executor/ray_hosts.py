"""Task hosts: one long-lived Ray actor per node that runs light tasks on threads.

The rule: a submission that asks for less than one CPU (``requirements.cpu < 1``), no GPU and
no sandbox is light — typically I/O-bound (an LLM call, a web request, a tool) — and runs on a
thread of its node's task host. Everything else runs as a plain Ray task in a worker process of
its own (CPU-bound work stays parallel across processes; GPU tasks keep a fresh process each).

Why: Ray runs each concurrent task in its own worker process, and starts one (about a second
on a small machine) for every task beyond the idle workers it has. 32 concurrent calls that
each wait 0.5 s took ~3 s that way. On a host they are 32 threads of one process that is
already running, and overlap fully.

A host is created on first use for its node (pinned there by node affinity) and lives as long
as the executor. Ray sees it as ``num_cpus=0``: Lattice's ResourceManager has already
counted the CPU of every task it places there, and limits how many run at once.

Same semantics as a plain task:

* results and errors: the same runner runs the task; the outcome is the task's return value;
* lost: if the host process dies (killed, crashed, its node gone) every task on it comes back
  ``lost`` and the scheduler dispatches it again, to a new host;
* cancel: the task's thread gets :class:`TaskInterrupted` raised at its next Python bytecode
  (as Ray raises KeyboardInterrupt in a task's process), so its ``finally`` blocks run. A
  thread blocked in C (a sleep, a socket read) sees it only when that call returns, and a
  thread cannot be killed: after the executor's grace period the task is reported cancelled
  and whatever it returns later is discarded, as on the local executor.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import ray

from lattice.executor.base import TaskOutcome, TaskSubmission
from lattice.executor.local_executor import CANCELLED
from lattice.executor.ray_payload import unpack
from lattice.executor.runner import execute

#: threads of one host: how many light tasks can run at once on a node (more wait in Ray's
#: queue for the actor; the ResourceManager usually admits far fewer)
HOST_CONCURRENCY = 256


def is_light(sub: TaskSubmission, sandboxed: bool) -> bool:
    """Whether ``sub`` runs on its node's task host (see the module docstring)."""
    return sub.requirements.cpu < 1 and not sub.node.gpu_ids and not sandboxed


class TaskInterrupted(BaseException):
    """Raised in a host thread to stop the task it runs. A BaseException, so that the task's
    own ``except Exception`` does not swallow it (like KeyboardInterrupt)."""


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Make ``thread_id`` raise ``exc_type`` at its next bytecode; None withdraws it."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None
    )


class TaskHost:
    """The actor: runs submissions on its threads (Ray gives it HOST_CONCURRENCY of them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: task key -> id of the thread running it
        self._threads: dict[str, int] = {}
        self._interrupted: set[str] = set()

    def pid(self) -> int:
        import os

        return os.getpid()

    def run(self, *args: Any) -> TaskOutcome:
        """Run ``(payload, upstream, code, *ref_values)`` (see ray_payload.pack) here.

        One variadic parameter on purpose: Ray binds the arguments of every call to the
        method's signature before it submits it, and that costs least for ``*args``.
        """
        payload, upstream, code, *ref_values = args
        sub = unpack(payload, upstream, code, tuple(ref_values))
        key = sub.task_key
        try:
            with self._lock:
                self._threads[key] = threading.get_ident()
            try:
                outcome = execute(sub, set_gpu_env=False)  # never a GPU task: see is_light
            finally:
                self._leave(key)
            return outcome
        except TaskInterrupted:
            # The interrupt may have landed inside the first _leave: leaving twice is harmless.
            self._leave(key)
            return TaskOutcome(error=CANCELLED)

    def interrupt(self, key: str) -> bool:
        """Raise TaskInterrupted in the thread running task ``key``; False if none is."""
        with self._lock:
            thread = self._threads.get(key)
            if thread is None:
                return False
            self._interrupted.add(key)
            _raise_in_thread(thread, TaskInterrupted)
            return True

    def _leave(self, key: str) -> None:
        with self._lock:
            self._threads.pop(key, None)
            if key in self._interrupted:
                self._interrupted.discard(key)
                # The task ended before it ran another bytecode: the interrupt is still
                # pending and must not hit the next task this thread runs.
                _raise_in_thread(threading.get_ident(), None)


class HostPool:
    """The task hosts of one executor, one per node, each created on first use."""

    def __init__(self) -> None:
        self._actor_class = ray.remote(TaskHost)
        self._lock = threading.Lock()
        self._hosts: dict[str, Any] = {}

    def get(self, node_id: str, strategy: Any) -> Any:
        """The host of ``node_id`` (placed with ``strategy``, None: anywhere), created if
        there is none."""
        with self._lock:
            host = self._hosts.get(node_id)
            if host is None:
                options: dict[str, Any] = {
                    "num_cpus": 0,
                    "max_concurrency": HOST_CONCURRENCY,
                    "max_restarts": 0,
                    "max_task_retries": 0,
                }
                if strategy is not None:
                    options["scheduling_strategy"] = strategy
                host = self._hosts[node_id] = self._actor_class.options(**options).remote()
            return host

    def forget(self, node_id: str, host: Any) -> None:
        """Drop ``host`` (it died): the next light task for its node starts a new one."""
        with self._lock:
            if self._hosts.get(node_id) is host:
                del self._hosts[node_id]

    def release(self, node_id: str) -> None:
        """Stop the host of ``node_id``, if it has one (its node is leaving and runs none of
        its tasks): a live actor would hold the node up while Ray drains it."""
        with self._lock:
            host = self._hosts.pop(node_id, None)
        if host is not None:
            _kill(host)

    def hosts(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._hosts)

    def close(self) -> None:
        """Stop every host (their running tasks are lost with them)."""
        with self._lock:
            hosts, self._hosts = list(self._hosts.values()), {}
        for host in hosts:
            _kill(host)


def _kill(host: Any) -> None:
    try:
        ray.kill(host, no_restart=True)
    except (ray.exceptions.RayError, ValueError):
        # Already dead, or Ray is gone: either way it no longer runs.
        return
