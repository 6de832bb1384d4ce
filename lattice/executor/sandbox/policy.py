"""Sandbox levels and limits (spec/001 §3.4.4): plain values, no I/O.

A server has a default :class:`SandboxSpec`; a task may carry its own. The one that applies is
:meth:`SandboxSpec.stricter`: the stronger level and, per limit, the lower value. A task can
therefore tighten its isolation but never loosen what the server imposes.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

from lattice.exceptions import LatticeInputError


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
