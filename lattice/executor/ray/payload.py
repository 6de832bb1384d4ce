"""What travels to a Ray worker for one submission, and large results that stay in Ray.

A submission crosses to the worker as three parts, each the cheapest form for what it holds:

* ``payload``: the submission without its upstream inputs, pickled by the standard library
  (every part of it is Lattice's own type or plain data; Ray then ships bytes as they are,
  without running its own cloudpickle over a dataclass tree on every submit);
* ``upstream``: the raw outputs of earlier tasks (any Python object; Ray serializes them);
* object refs, as top-level arguments, because Ray resolves only those: refs an earlier task
  left in upstream inputs, :class:`StoredValue` outputs (see below), and the outcomes of
  upstream tasks still running (:class:`~lattice.executor.base.PendingOutput`): Ray starts the
  task once they are ready, without the head in between. If such an upstream failed, the
  task does not run its code (:class:`~lattice.executor.base.UpstreamFailed`).

Large results. The head owns the object that holds each task's outcome (it submitted the task).
When an output value is large (see ``large_values``), the head does not copy it into the next
task's arguments: it keeps a :class:`StoredValue` (the outcome's ref, the value's place in it,
and the head's zero-copy view of it) as the task's raw result. A dependant receives the ref as
an argument, so Ray hands it the value straight from the object store; and a client that
reads the run gets a reference leaf instead of the bytes, fetching the value on demand.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

import cloudpickle
import ray

from lattice.executor.base import (
    PendingOutput,
    TaskKind,
    TaskOutcome,
    TaskSubmission,
    output_of,
)
from lattice.executor.large_values import KeptValue, keep_large_values

#: code larger than this goes to the object store once per function instead of with every
#: submission; Ray itself puts any argument above 100 KiB into the object store on each call
CODE_INLINE_BYTES = 100 * 1024


class StoredValue(KeptValue):
    """An output value left inside its task's outcome object in Ray's object store.

    ``path`` is its place in ``outcome.value`` (``(key,)``, or ``(index, key)`` in a batch).
    ``value`` is the head's own view of it (zero-copy for arrays on the head's node): it keeps
    a copy on the head's node, so the value outlives the node that made it, and it is what a
    client gets when it fetches the value.
    """

    __slots__ = ("path", "ref")

    def __init__(self, ref: ray.ObjectRef[Any], path: tuple[Any, ...], value: Any) -> None:
        super().__init__(value)
        self.ref = ref
        self.path = path

    def __repr__(self) -> str:
        return f"<StoredValue {self.describe()} at {self.path}>"


def store_large_values(
    outcome: TaskOutcome, ref: ray.ObjectRef[Any], kind: TaskKind
) -> TaskOutcome:
    """Replace the large top-level output values of a successful outcome with
    :class:`StoredValue` (head side; see :func:`~lattice.executor.large_values.keep_large_values`)."""
    return keep_large_values(outcome, kind, lambda path, value: StoredValue(ref, path, value))


class _HasRef(Protocol):
    ref: ray.ObjectRef[Any]


@dataclass(frozen=True)
class RefSlot:
    """Stands in an upstream dict for the ``index``-th object ref passed as an argument.

    With ``path``, the ref is an earlier task's outcome and the value sits at ``path`` in its
    ``outcome.value`` (a :class:`StoredValue`).
    """

    index: int
    path: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Packed:
    payload: bytes
    upstream: Any
    refs: list[Any]


def pack(sub: TaskSubmission, drop_code: bool = False) -> Packed:
    """Split ``sub`` into what travels to the worker (see the module docstring).

    ``drop_code``: the code travels separately (through the object store; see unpack)."""
    refs: list[Any] = []

    def detach(inputs: Any) -> Any:
        if not isinstance(inputs, dict):
            return inputs
        out = {}
        for name, value in inputs.items():
            if isinstance(value, StoredValue):
                out[name] = RefSlot(len(refs), value.path)
                refs.append(value.ref)
            elif isinstance(value, PendingOutput):
                # the upstream's outcome, once Ray has it; the value is at outcome.value[key]
                out[name] = RefSlot(len(refs), (value.key,))
                refs.append(cast(_HasRef, value.handle).ref)
            elif isinstance(value, ray.ObjectRef):
                out[name] = RefSlot(len(refs))
                refs.append(value)
            else:
                out[name] = value
        return out

    upstream = sub.upstream_inputs
    detached = [detach(d) for d in upstream] if isinstance(upstream, list) else detach(upstream)
    bare = (
        replace(sub, upstream_inputs=None, code=b"")
        if drop_code
        else replace(sub, upstream_inputs=None)
    )
    try:
        payload = pickle.dumps(bare, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        # user_inputs built by hand (not from the wire) may hold what only cloudpickle can
        # carry; pickle.loads in the worker reads cloudpickle's output as well
        payload = cloudpickle.dumps(bare)
    return Packed(payload, detached, refs)


def unpack(
    payload: bytes, upstream: Any, code: bytes | None, ref_values: tuple[Any, ...]
) -> TaskSubmission:
    """Inverse of :func:`pack`, in the worker; ``code`` is the function when it travelled
    through the object store (see CODE_INLINE_BYTES)."""
    sub: TaskSubmission = pickle.loads(payload)
    changes: dict[str, Any] = {"upstream_inputs": _attach(upstream, ref_values)}
    if code is not None:
        changes["code"] = code
    return replace(sub, **changes)


def _attach(upstream: Any, values: tuple[Any, ...]) -> Any:
    if not values:
        return upstream

    def resolve(slot: RefSlot) -> Any:
        value = values[slot.index]
        if slot.path is None:
            return value
        return output_of(value, slot.path)  # value: the earlier task's TaskOutcome

    def attach(inputs: Any) -> Any:
        if not isinstance(inputs, dict):
            return inputs
        return {k: resolve(v) if isinstance(v, RefSlot) else v for k, v in inputs.items()}

    return [attach(d) for d in upstream] if isinstance(upstream, list) else attach(upstream)
