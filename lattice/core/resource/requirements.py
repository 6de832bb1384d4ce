"""What a task asks for: parsed once, at the edge, from the wire's resource dict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lattice.exceptions import InvalidResourceError

MB = 1024 * 1024

#: The resource keys a task may name, and what each means.
RESOURCE_KEYS = {
    "cpu": "CPU cores, may be fractional (default 1)",
    "cpu_mem": "memory in MB",
    "gpu": "number of GPUs",
    "gpu_mem": "memory in MB needed on each GPU (0 = whole GPUs)",
}


def _number(key: str, value: Any, *, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidResourceError(f"resource {key!r} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise InvalidResourceError(f"resource {key!r} must be >= 0, got {value!r}")
    if integer and value != int(value):
        raise InvalidResourceError(f"resource {key!r} must be a whole number, got {value!r}")
    return float(value)


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
