"""Client-side handles: a task added to a workflow, and references to its outputs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lattice.exceptions import LatticeInputError


@dataclass(frozen=True)
class TaskOutput:
    """One output of a task: pass it as another task's input to wire the DAG."""

    task_id: str
    key: str

    @property
    def ref(self) -> str:
        return f"{self.task_id}.{self.key}"


class TaskOutputs(Mapping[str, TaskOutput]):
    def __init__(self, task_id: str, task_name: str, keys: tuple[str, ...]) -> None:
        self._task_id, self._task_name, self._keys = task_id, task_name, keys

    def __getitem__(self, key: str) -> TaskOutput:
        if key not in self._keys:
            raise LatticeInputError(
                f"task {self._task_name} has no output {key!r}; it declares {list(self._keys)}"
            )
        return TaskOutput(self._task_id, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True)
class LatticeTask:
    task_id: str
    task_name: str
    workflow_id: str
    output_keys: tuple[str, ...]

    @property
    def outputs(self) -> TaskOutputs:
        return TaskOutputs(self.task_id, self.task_name, self.output_keys)


class RunOutputs(dict[str, Any]):
    """Each task's outputs by task id; a :class:`LatticeTask` works as a key too."""

    def __getitem__(self, key: str | LatticeTask) -> Any:
        return super().__getitem__(key.task_id if isinstance(key, LatticeTask) else key)
