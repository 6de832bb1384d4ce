"""Task input/output declarations (spec/001 §5.2), parsed once from their wire form."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from lattice.exceptions import InvalidReferenceError, LatticeInputError


class InputSchema(str, Enum):
    FROM_USER = "from_user"
    FROM_TASK = "from_task"


@dataclass(frozen=True)
class TaskRef:
    """``"task_id.output_key"``: an output of another task of the same workflow."""

    task_id: str
    output_key: str

    @classmethod
    def parse(cls, text: Any, field: str) -> TaskRef:
        if not isinstance(text, str):
            raise InvalidReferenceError(f"{field} must be 'task_id.output_key', got {text!r}")
        task_id, dot, key = text.partition(".")
        if not dot or not task_id or not key:
            raise InvalidReferenceError(f"{field} must be 'task_id.output_key', got {text!r}")
        return cls(task_id, key)

    def __str__(self) -> str:
        return f"{self.task_id}.{self.output_key}"


@dataclass(frozen=True)
class InputParam:
    key: str
    schema: InputSchema
    data_type: str
    #: the wire value for ``from_user``; the reference for ``from_task``
    value: Any
    ref: TaskRef | None = None


def parse_task_input(task_input: Any) -> tuple[InputParam, ...]:
    """Parse ``{"input_params": {"1": {"key", "input_schema", "data_type", "value"}}}``."""
    if task_input is None or task_input == {}:
        return ()
    if not isinstance(task_input, dict):
        raise LatticeInputError("task_input must be an object with 'input_params'")
    params = task_input.get("input_params", {})
    if not isinstance(params, dict):
        raise LatticeInputError("task_input.input_params must be an object")
    out: list[InputParam] = []
    seen: set[str] = set()
    for slot, raw in params.items():
        field = f"task_input.input_params.{slot}"
        if not isinstance(raw, dict):
            raise LatticeInputError(f"{field} must be an object")
        key = raw.get("key")
        if not isinstance(key, str) or not key:
            raise LatticeInputError(f"{field}.key must be a non-empty string")
        if key in seen:
            raise LatticeInputError(f"{field}.key {key!r} is declared twice")
        seen.add(key)
        try:
            schema = InputSchema(raw.get("input_schema", "from_user"))
        except ValueError:
            raise LatticeInputError(
                f"{field}.input_schema must be 'from_user' or 'from_task', "
                f"got {raw.get('input_schema')!r}"
            ) from None
        data_type = str(raw.get("data_type", "any"))
        value = raw.get("value")
        ref = TaskRef.parse(value, f"{field}.value") if schema is InputSchema.FROM_TASK else None
        out.append(InputParam(key, schema, data_type, value, ref))
    return tuple(out)


def parse_task_output(task_output: Any) -> tuple[str, ...]:
    """Parse ``{"output_params": {"1": {"key", "data_type"}}}`` into the output keys."""
    if task_output is None or task_output == {}:
        return ()
    if not isinstance(task_output, dict):
        raise LatticeInputError("task_output must be an object with 'output_params'")
    params = task_output.get("output_params", {})
    if not isinstance(params, dict):
        raise LatticeInputError("task_output.output_params must be an object")
    keys: list[str] = []
    for slot, raw in params.items():
        key = raw.get("key") if isinstance(raw, dict) else None
        if not isinstance(key, str) or not key:
            raise LatticeInputError(
                f"task_output.output_params.{slot}.key must be a non-empty string"
            )
        if key in keys:
            raise LatticeInputError(
                f"task_output.output_params.{slot}.key {key!r} is declared twice"
            )
        keys.append(key)
    return tuple(keys)
