"""The task vocabulary: what a task asks for, in plain values (no I/O, nothing of the server).

Resources, priority, batch policy, sandbox level and limits, the digest that names a task's
code, and the kinds of error the framework itself reports. The client SDK, the API, the core
and the executors all speak it; it imports nothing of Lattice but the exception tree.
"""

from __future__ import annotations

import contextvars
import hashlib
import math
import sys
from dataclasses import dataclass, fields, replace
from enum import Enum, IntEnum
from typing import Any

from lattice.exceptions import InvalidResourceError, LatticeInputError, LatticeUsageError

# --- resources ------------------------------------------------------------------------------

MB = 1024 * 1024

#: The resource keys a task may name, and what each means.
RESOURCE_KEYS = {
    "cpu": "CPU cores, may be fractional (default 1)",
    "cpu_mem": "memory in MB",
    "gpu": "number of GPUs",
    "gpu_mem": "memory in MB needed on each GPU (0 = whole GPUs)",
}


#: The largest value each resource may take, on a task or a node: far above any machine, low
#: enough that sums and byte counts stay exact (a NaN or 1e308 would void the accounting).
RESOURCE_LIMITS = {
    "cpu": 65536,
    "cpu_mem": 2**30,  # MB: 1 PiB
    "gpu": 1024,
    "gpu_mem": 2**24,  # MB per GPU: 16 TiB
}


def bounded_number(key: str, value: Any, *, integer: bool, limit: float | None = None) -> float:
    """``value`` as a float when it is a finite number in ``[0, limit]`` (``limit`` defaults
    to :data:`RESOURCE_LIMITS` of ``key``), whole when ``integer``.

    Raises:
        InvalidResourceError: naming ``key`` and what it must be.
    """
    bound = RESOURCE_LIMITS.get(key, 0) if limit is None else limit
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidResourceError(f"resource {key!r} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or value > bound:
        raise InvalidResourceError(
            f"resource {key!r} must be a number from 0 to {bound:g}, got {value!r}"
        )
    if integer and value != int(value):
        raise InvalidResourceError(f"resource {key!r} must be a whole number, got {value!r}")
    return float(value)


def _number(key: str, value: Any, *, integer: bool) -> float:
    return bounded_number(key, value, integer=integer)


@dataclass(frozen=True)
class TaskResourceRequirements:
    """A task's request: ``cpu`` cores, ``memory_bytes``, ``gpu`` GPUs, ``gpu_memory`` MB each.

    ``gpu_memory == 0`` with ``gpu > 0`` means whole GPUs; otherwise each of the ``gpu`` GPUs
    must have ``gpu_memory`` MB free, and other tasks may share what is left of it.
    """

    cpu: float = 1.0
    memory_bytes: int = 0
    gpu: int = 0
    gpu_memory: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TaskResourceRequirements:
        """Parse ``{"cpu", "cpu_mem", "gpu", "gpu_mem"}``; any other key is rejected by name."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InvalidResourceError(f"resources must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(RESOURCE_KEYS))
        if unknown:
            raise InvalidResourceError(
                f"unknown resource key(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(RESOURCE_KEYS)}"
            )
        cpu = _number("cpu", data.get("cpu", 1.0), integer=False)
        mem = _number("cpu_mem", data.get("cpu_mem", 0), integer=False)
        gpu = _number("gpu", data.get("gpu", 0), integer=True)
        gpu_mem = _number("gpu_mem", data.get("gpu_mem", 0), integer=False)
        if gpu_mem and not gpu:
            raise InvalidResourceError("resource 'gpu_mem' needs 'gpu' >= 1")
        return cls(cpu=cpu, memory_bytes=int(mem * MB), gpu=int(gpu), gpu_memory=int(gpu_mem))

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu,
            "cpu_mem": self.memory_bytes // MB,
            "gpu": self.gpu,
            "gpu_mem": self.gpu_memory,
        }

    def describe(self) -> str:
        parts = [f"cpu={self.cpu:g}"]
        if self.memory_bytes:
            parts.append(f"cpu_mem={self.memory_bytes // MB}MB")
        if self.gpu:
            parts.append(f"gpu={self.gpu}")
        if self.gpu_memory:
            parts.append(f"gpu_mem={self.gpu_memory}MB")
        return ", ".join(parts)


# --- priority -------------------------------------------------------------------------------


class Priority(IntEnum):
    """spec/004's five levels: a lower value runs first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    IDLE = 4


PRIORITY_LEVELS = range(5)
DEFAULT_PRIORITY = int(Priority.NORMAL)


def parse_priority(value: Any, default: int = DEFAULT_PRIORITY) -> int:
    """A priority as sent: ``None`` (``default``: NORMAL unless said otherwise), a level
    number 0-4, or a level name (``"high"``, case-insensitive). Raises LatticeInputError
    naming the allowed values."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            return int(Priority[value.strip().upper()])
        except KeyError:
            pass
    elif not isinstance(value, bool) and isinstance(value, int) and value in PRIORITY_LEVELS:
        return value
    names = ", ".join(f"{p.name.lower()}={p.value}" for p in Priority)
    raise LatticeInputError(
        f"priority must be a level from 0 to 4 or its name ({names}), got {value!r}"
    )


# --- batching -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchConfig:
    batch_size: int
    batch_timeout: float

    @classmethod
    def parse(cls, raw: Any) -> BatchConfig | None:
        """``{"enabled": true, "batch_size": 10, "batch_timeout": 1.0}``; None when disabled."""
        if raw is None or raw == {}:
            return None
        if not isinstance(raw, dict):
            raise LatticeInputError("batch_config must be an object")
        if not raw.get("enabled", True):
            return None
        size, timeout = raw.get("batch_size", 10), raw.get("batch_timeout", 1.0)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise LatticeInputError(
                f"batch_config.batch_size must be an integer >= 1, got {size!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
            raise LatticeInputError(
                f"batch_config.batch_timeout must be a number >= 0, got {timeout!r}"
            )
        return cls(size, float(timeout))

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": True, "batch_size": self.batch_size, "batch_timeout": self.batch_timeout}


# --- sandbox --------------------------------------------------------------------------------
# Sandbox levels and limits (spec/001 §3.4.4). A server has a default SandboxSpec; a task may
# carry its own. The one that applies is SandboxSpec.stricter: the stronger level and, per
# limit, the lower value, so a task can tighten its isolation but never loosen the server's.


class SandboxLevel(str, Enum):
    NONE = "none"
    SUBPROCESS = "subprocess"
    SECCOMP = "seccomp"
    DOCKER = "docker"

    @property
    def strength(self) -> int:
        return _ORDER.index(self)

    @classmethod
    def parse(cls, value: str | SandboxLevel) -> SandboxLevel:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(level.value for level in cls)
            raise LatticeInputError(
                f"unknown sandbox level {value!r}; allowed: {allowed}"
            ) from None


_ORDER = [SandboxLevel.NONE, SandboxLevel.SUBPROCESS, SandboxLevel.SECCOMP, SandboxLevel.DOCKER]

#: Limits every isolated child gets unless a stricter one is asked for. Open files, file size and
#: process count always have a ceiling inside a sandbox: without one a single runaway loop can
#: take the node down. CPU time and memory have none by default, because a right value depends
#: on the workload.
DEFAULT_MAX_OPEN_FILES = 1024
DEFAULT_MAX_FILE_SIZE_MB = 1024
DEFAULT_MAX_PROCESSES = 512

_LIMIT_FIELDS = (
    "cpu_time_limit",
    "memory_limit_mb",
    "max_open_files",
    "max_file_size_mb",
    "max_processes",
)


def default_docker_image() -> str:
    """``python:X.Y-slim`` for the running interpreter: pickled code is bytecode of this version."""
    return f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"


@dataclass(frozen=True)
class SandboxSpec:
    """How one task is isolated. ``None`` limits mean "not asked for".

    ``cpu_time_limit``: seconds of CPU time (rounded up to whole seconds);
    ``memory_limit_mb``: address space of the task process (container memory for docker);
    ``max_open_files``: file descriptors; ``max_file_size_mb``: largest file the task may write;
    ``max_processes``: processes and threads the task may have at once;
    ``docker_image``: image for the docker level (the server's choice wins when it makes one).

    Raises :class:`LatticeInputError` for a limit that is not a positive number.
    """

    level: SandboxLevel = SandboxLevel.NONE
    cpu_time_limit: float | None = None
    memory_limit_mb: int | None = None
    docker_image: str | None = None
    max_open_files: int | None = None
    max_file_size_mb: int | None = None
    max_processes: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", SandboxLevel.parse(self.level))
        for name in _LIMIT_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            integer = name != "cpu_time_limit"
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
                or (integer and value != int(value))
            ):
                kind = "a whole number" if integer else "a number"
                raise LatticeInputError(f"sandbox {name} must be {kind} > 0, got {value!r}")
            if integer:
                object.__setattr__(self, name, int(value))
        if self.docker_image is not None and not str(self.docker_image).strip():
            raise LatticeInputError("sandbox docker_image must not be empty")

    @property
    def isolated(self) -> bool:
        return self.level is not SandboxLevel.NONE

    def stricter(self, other: SandboxSpec | None) -> SandboxSpec:
        """The spec that honours both ``self`` (the server's) and ``other`` (a task's request).

        The level is the stronger of the two; each limit the lower of those set. The docker
        image is ``self``'s when set (a task does not pick what the server pinned), else
        ``other``'s.
        """
        if other is None:
            return self
        level = self.level if self.level.strength >= other.level.strength else other.level
        merged: dict[str, Any] = {
            "level": level,
            "docker_image": self.docker_image or other.docker_image,
        }
        for name in _LIMIT_FIELDS:
            values = [v for v in (getattr(self, name), getattr(other, name)) if v is not None]
            merged[name] = min(values) if values else None
        return SandboxSpec(**merged)

    def with_defaults(self) -> SandboxSpec:
        """Fill the limits an isolated child always has (open files, file size, processes)."""
        if not self.isolated:
            return self
        return replace(
            self,
            max_open_files=self.max_open_files or DEFAULT_MAX_OPEN_FILES,
            max_file_size_mb=self.max_file_size_mb or DEFAULT_MAX_FILE_SIZE_MB,
            max_processes=self.max_processes or DEFAULT_MAX_PROCESSES,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``level`` as its name, unset fields left out."""
        out: dict[str, Any] = {"level": self.level.value}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "level" and value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxSpec:
        """Inverse of :meth:`to_dict`; an unknown key is rejected by name."""
        if not isinstance(data, dict):
            raise LatticeInputError("sandbox must be an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LatticeInputError(
                f"unknown sandbox key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**data)


# --- code -----------------------------------------------------------------------------------


def code_digest(code: bytes) -> str:
    """Stable id of a serialized function, for worker-side caching."""
    return hashlib.blake2b(code, digest_size=16).hexdigest()


# --- errors the framework reports -----------------------------------------------------------


class ErrorKind(str, Enum):
    """The ``type`` of a task error that Lattice itself raised, not the task's code."""

    #: no node is, or can ever be, able to hold what the task asks for
    RESOURCE_UNAVAILABLE = "ResourceUnavailableError"
    #: an input names a task or output the run does not have
    INVALID_REFERENCE = "InvalidReferenceError"
    #: the worker or node that ran the task died or left
    WORKER_LOST = "WorkerLostError"
    #: the task was cancelled
    TASK_CANCELLED = "TaskCancelledError"
    #: the executor could not run the task
    EXECUTOR = "ExecutorError"
    #: the sandbox around the task failed (not the task itself)
    SANDBOX = "SandboxError"
    #: the task's result could not be serialized for the wire
    RESULT_ENCODING = "ResultEncodingError"
    #: the client could not decode a result
    RESULT_DECODING = "ResultDecodingError"
    #: the scheduler failed while deciding about the task (a bug in Lattice: reported, never
    #: left hanging)
    SCHEDULER = "SchedulerError"
    #: a run resumed after a restart whose stored definition or code cannot be loaded
    CODE_UNAVAILABLE = "CodeUnavailableError"


# --- the attempt a task's code runs as ------------------------------------------------------


@dataclass(frozen=True)
class TaskAttempt:
    """Which task of which run this is, and its attempt (1, then 2, ... after its node was
    lost or its head restarted). ``idempotency_key`` is the same for every attempt of one task
    of one run: a side effect keyed by it (a payment id, an upsert) happens once however often
    the task runs."""

    run_id: str
    task_id: str
    attempt: int

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}/{self.task_id}"


#: set where a task runs, for the length of its call (see current_attempt)
_CURRENT_ATTEMPT: contextvars.ContextVar[TaskAttempt | None] = contextvars.ContextVar(
    "lattice_current_attempt", default=None
)


def current_attempt() -> TaskAttempt:
    """The attempt the calling task code runs as. Raises LatticeUsageError outside a task's
    call, and in a batch task (it runs several tasks at once: see docs/durability.md)."""
    attempt = _CURRENT_ATTEMPT.get()
    if attempt is None:
        raise LatticeUsageError(
            "current_attempt() is for the code of a running (unbatched) task or LangGraph node"
        )
    return attempt
