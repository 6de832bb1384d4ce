"""``@task``: declare a function's inputs, outputs and resources (spec/001 §3.1.3)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lattice.exceptions import LatticeInputError
from lattice.vocabulary import BatchConfig, SandboxLevel, TaskResourceRequirements, parse_priority


@dataclass(frozen=True)
class TaskMetadata:
    func_name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    resources: dict[str, Any]
    batch_config: dict[str, Any] | None = None
    priority: int | None = None
    sandbox: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class TaskFunction:
    """A function declared with ``@task``. Calling it runs it locally, unchanged."""

    def __init__(self, func: Callable[..., Any], metadata: TaskMetadata) -> None:
        self.func = func
        self.metadata = metadata
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<lattice task {self.metadata.func_name} {list(self.metadata.inputs)} -> {list(self.metadata.outputs)}>"


def _names(value: Sequence[str] | None, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
        raise LatticeInputError(f"{what} must be a list of non-empty names, got {value!r}")
    if len(set(value)) != len(value):
        raise LatticeInputError(f"{what} has a duplicate name: {list(value)}")
    return tuple(value)


def task(
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    resources: dict[str, Any] | None = None,
    batch_size: int | None = None,
    batch_timeout: float | None = None,
    *,
    priority: int | str | None = None,
    sandbox: str | None = None,
    cpu_time_limit: float | None = None,
    memory_limit_mb: int | None = None,
) -> Callable[[Callable[..., Any]], TaskFunction]:
    """Declare a task. The function receives one dict of its ``inputs`` and returns a dict
    with its ``outputs`` (with a single output, a bare value is taken as that output).

    ``resources``: ``cpu`` (may be fractional), ``cpu_mem`` (MB), ``gpu``, ``gpu_mem`` (MB per
    GPU). ``batch_size``/``batch_timeout`` make it batchable: it then receives a list of input
    dicts and returns a list of output dicts. ``priority``: ``0``/``"critical"``,
    ``1``/``"high"``, ``2``/``"normal"``, ``3``/``"low"``, ``4``/``"idle"`` (unset: the run's,
    normal unless ``run(priority=...)`` says otherwise).
    ``sandbox`` ("subprocess", "seccomp", "docker") and the limits ask for stricter isolation
    than the server's default. Every argument is checked here: a mistake raises
    LatticeInputError (a ValueError) naming it.
    """
    in_names, out_names = _names(inputs, "inputs"), _names(outputs, "outputs")
    TaskResourceRequirements.from_dict(resources)  # validates, raises naming the key
    batch = None
    if batch_size is not None or batch_timeout is not None:
        batch = {
            "enabled": True,
            "batch_size": 10 if batch_size is None else batch_size,
            "batch_timeout": 1.0 if batch_timeout is None else batch_timeout,
        }
        BatchConfig.parse(batch)
    prio = None if priority is None else parse_priority(priority)
    sandbox_cfg = None
    if sandbox is not None or cpu_time_limit is not None or memory_limit_mb is not None:
        level = SandboxLevel.parse(sandbox or "subprocess")
        for name, limit in (
            ("cpu_time_limit", cpu_time_limit),
            ("memory_limit_mb", memory_limit_mb),
        ):
            if limit is not None and (isinstance(limit, bool) or not limit > 0):
                raise LatticeInputError(f"{name} must be > 0, got {limit!r}")
        sandbox_cfg = {
            "level": level.value,
            "cpu_time_limit": cpu_time_limit,
            "memory_limit_mb": memory_limit_mb,
        }

    def wrap(func: Callable[..., Any]) -> TaskFunction:
        if not callable(func):
            raise LatticeInputError(f"@task decorates functions, got {func!r}")
        meta = TaskMetadata(
            func_name=getattr(func, "__name__", "task"),
            inputs=in_names,
            outputs=out_names,
            resources=dict(resources or {}),
            batch_config=batch,
            priority=prio,
            sandbox=sandbox_cfg,
        )
        return TaskFunction(func, meta)

    return wrap
