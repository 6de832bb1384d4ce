"""Client-side handles: a task added to a workflow, and references to its outputs."""

from __future__ import annotations

from collections.abc import Callable, ItemsView, Iterator, Mapping, ValuesView
from dataclasses import dataclass
from typing import Any

from lattice.exceptions import LatticeInputError
from lattice.serialization import is_ref_leaf


def has_large_values(outputs: Any) -> bool:
    """Whether a task's outputs (wire form) hold a large-value reference."""
    return isinstance(outputs, dict) and any(is_ref_leaf(v) for v in outputs.values())


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
    """Each task's outputs by task id; a :class:`LatticeTask` works as a key too.

    A large output value (kept by the server, see docs/api.md) is fetched the first time its
    task's outputs are read through ``[]``, ``get``, ``values``, ``items`` or ``copy``; a
    task whose outputs are never read costs no transfer.
    """

    def __init__(
        self, resolve: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None
    ) -> None:
        super().__init__()
        self._resolve = resolve
        #: tasks whose outputs still hold large-value references
        self._unfetched: set[str] = set()

    def __setitem__(self, task_id: str, outputs: Any) -> None:
        super().__setitem__(task_id, outputs)
        if self._resolve is not None and has_large_values(outputs):
            self._unfetched.add(task_id)
        else:
            self._unfetched.discard(task_id)

    def __getitem__(self, key: str | LatticeTask) -> Any:
        task_id = key.task_id if isinstance(key, LatticeTask) else key
        outputs = super().__getitem__(task_id)
        if task_id in self._unfetched and self._resolve is not None:
            outputs = self._resolve(task_id, outputs)
            super().__setitem__(task_id, outputs)
            self._unfetched.discard(task_id)
        return outputs

    def get(self, key: str | LatticeTask, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def _fetch_all(self) -> None:
        for task_id in list(self._unfetched):
            self[task_id]

    def values(self) -> ValuesView[Any]:  # type: ignore[override]
        self._fetch_all()
        return super().values()

    def items(self) -> ItemsView[str, Any]:  # type: ignore[override]
        self._fetch_all()
        return super().items()

    def copy(self) -> dict[str, Any]:
        self._fetch_all()
        return dict(super().items())
