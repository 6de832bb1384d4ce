"""Large output values: kept where they were made, reached by reference.

An output value is large when it is an array (anything whose type has ``nbytes``: numpy,
torch, pyarrow, ...), ``bytes``/``bytearray``/``str`` or a sandboxed task's sealed pickle, of
more than :data:`LARGE_VALUE_BYTES`. An executor replaces each large top-level output of a
finished task with a :class:`~lattice.serialization.LargeValue`: dependants get the value
itself, and a run's ``finish_task`` carries a small reference leaf instead of the bytes
(clients fetch the value when they read it, see docs/api.md). The Ray executor keeps the value
in Ray's object store (``ray.payload.StoredValue``); the local executor keeps the object it
already holds (:class:`KeptValue`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from lattice.executor.base import TaskKind, TaskOutcome
from lattice.serialization import LargeValue, SealedValue

#: an output value larger than this (bytes) is kept where it was made
LARGE_VALUE_BYTES = 1024 * 1024

#: ``(path of the value in outcome.value, value) -> its LargeValue``
MakeLarge = Callable[[tuple[Any, ...], Any], LargeValue]


def value_size(value: Any) -> int | None:
    """Bytes of an array-like, bytes-like or str value, read without serializing it; None
    for anything else (which is then passed by value, as small values are)."""
    if isinstance(value, bytes | bytearray | str):
        return len(value)
    if type(value) is SealedValue:  # a sandboxed task's value, still its pickle
        return len(value.data)
    nbytes = getattr(type(value), "nbytes", None)
    if nbytes is None:
        return None
    size = getattr(value, "nbytes", None)  # numpy, torch, pyarrow, memoryview, pandas Series
    return size if isinstance(size, int) else None


def is_large(value: Any) -> bool:
    size = value_size(value)
    return size is not None and size > LARGE_VALUE_BYTES


def describe(value: Any) -> dict[str, Any]:
    """What a client sees in place of a large value: its size and type."""
    t = type(value)
    return {"bytes": value_size(value) or 0, "type": f"{t.__module__}.{t.__qualname__}"}


def keep_large_values(outcome: TaskOutcome, kind: TaskKind, make: MakeLarge) -> TaskOutcome:
    """Replace the large top-level output values of a successful CODE or BATCH outcome with
    ``make(path, value)``. LangGraph results only ever go to their caller: unchanged."""
    if not outcome.ok or kind is TaskKind.LANGGRAPH:
        return outcome
    value = outcome.value
    if kind is TaskKind.CODE:
        kept = _keep_dict(value, (), make)
        return outcome if kept is value else replace(outcome, value=kept)
    if not isinstance(value, list):
        return outcome
    items = [_keep_dict(v, (i,), make) for i, v in enumerate(value)]
    if all(a is b for a, b in zip(items, value, strict=True)):
        return outcome
    return replace(outcome, value=items)


def has_large_values(outcome: TaskOutcome, kind: TaskKind) -> bool:
    """Whether :func:`keep_large_values` would replace any value of ``outcome``."""
    if not outcome.ok or kind is TaskKind.LANGGRAPH:
        return False
    value = outcome.value
    dicts = [value] if kind is TaskKind.CODE else value if isinstance(value, list) else []
    return any(isinstance(d, dict) and any(is_large(v) for v in d.values()) for d in dicts)


def _keep_dict(outputs: Any, prefix: tuple[Any, ...], make: MakeLarge) -> Any:
    if not isinstance(outputs, dict) or not any(is_large(v) for v in outputs.values()):
        return outputs
    return {k: make((*prefix, k), v) if is_large(v) else v for k, v in outputs.items()}


class KeptValue(LargeValue):
    """A large output kept as the object it is, in the head's process (the local executor's;
    the Ray executor's ``StoredValue`` adds where it lies in the object store). Pickling it
    gives the value: whatever receives it by pickle (a sandboxed dependant) gets the value."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def load(self) -> Any:
        return self.value

    def describe(self) -> dict[str, Any]:
        return describe(self.value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_identity, (self.value,))

    def __repr__(self) -> str:
        return f"<KeptValue {describe(self.value)}>"


def _identity(value: Any) -> Any:
    return value


def keep_in_process(path: tuple[Any, ...], value: Any) -> LargeValue:
    """The local executor's :data:`MakeLarge`."""
    return KeptValue(value)
