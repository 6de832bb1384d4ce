"""Values on the wire: JSON where possible, cloudpickle where not.

Results travel to clients as JSON. A value JSON cannot hold faithfully (a tuple, a set, bytes,
a numpy array, a LangChain message, a dict with non-string keys, NaN) is replaced, at the
smallest enclosing leaf, by ``{"__lattice_pickle__": "<base64 cloudpickle>"}``. A Python client
decodes it back to the original object; other clients still see every JSON-native part.

A task output an executor keeps where it was made (:class:`LargeValue`, e.g. a 50 MB array
left in Ray's object store) is written as ``{"__lattice_ref__": {"bytes", "type"}}`` instead:
clients fetch it on demand (``GET /runs/{run_id}/results/{task_id}/{key}``, see docs/api.md).

Code and LangGraph arguments travel as base64 cloudpickle strings (spec/002 ``code_ser``,
``args``, ``kwargs``).
"""

from __future__ import annotations

import base64
import binascii
import math
import pickletools
from abc import ABC, abstractmethod
from typing import Any

import cloudpickle

from lattice.exceptions import InvalidCodeError

PICKLE_KEY = "__lattice_pickle__"
REF_KEY = "__lattice_ref__"


class LargeValue(ABC):
    """A task output an executor keeps where it was made instead of copying it into messages.

    Only top-level output values are ever large values (``result[key]`` of a ``finish_task``).
    """

    @abstractmethod
    def load(self) -> Any:
        """The value itself."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What a client sees in its place: ``{"bytes": size, "type": "module.Class"}``."""


class LargeValueLeaf(dict[str, Any]):
    """The wire form of a :class:`LargeValue`: ``{"__lattice_ref__": describe()}``.

    JSON-encodes as that plain dict; holding the value here ties its lifetime to the message
    that carries it (a run's log keeps it until the run is retired).
    """

    def __init__(self, large: LargeValue) -> None:
        super().__init__({REF_KEY: large.describe()})
        self.large = large


def is_ref_leaf(value: Any) -> bool:
    """True for the wire form of a large value, as sent or as a client decoded it."""
    return type(value) in (dict, LargeValueLeaf) and len(value) == 1 and REF_KEY in value


def dumps_b64(obj: Any) -> str:
    """cloudpickle ``obj`` and return it as base64 text."""
    return base64.b64encode(cloudpickle.dumps(obj)).decode("ascii")


def loads_b64(text: str) -> Any:
    """Inverse of :func:`dumps_b64`. Runs the pickle: only for trusted input."""
    return cloudpickle.loads(base64.b64decode(text))


def decode_code(text: str, field: str = "code_ser") -> bytes:
    """Decode base64 pickled code and check its structure without executing it.

    Raises :class:`InvalidCodeError` naming ``field`` if the text is not base64 or the bytes
    are not a complete pickle stream. Unpickling would run code inside the server, so only the
    opcode stream is walked here; the function itself is loaded where the task runs.
    """
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise InvalidCodeError(f"{field} is not valid base64: {exc}") from exc
    if not raw:
        raise InvalidCodeError(f"{field} is empty")
    try:
        for _ in pickletools.genops(raw):
            pass
    except (ValueError, IndexError, KeyError, EOFError) as exc:
        raise InvalidCodeError(f"{field} is not a pickled function: {exc}") from exc
    return raw


class SealedValue:
    """A value a sandboxed task produced, kept as the task's pickle bytes.

    Pickling a SealedValue keeps it sealed (it does not run the inner pickle), so it can pass
    through Ray and the server. :meth:`open` runs the task's pickle: call it only where the
    task's code may run anyway. The sandbox child opens sealed upstream inputs before the task
    sees them; a client opens what it receives.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def open(self) -> Any:
        return cloudpickle.loads(self.data)

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (SealedValue, (self.data,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SealedValue) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"<SealedValue: {len(self.data)} pickled bytes from a sandboxed task>"


class WireValue:
    """An earlier task's output read back from the head's store, still in wire form
    (:func:`encode_value`): it is decoded where the task that reads it runs, never in the head.
    ``key``: the output to take from the decoded value (when the whole outputs dict travelled
    as one pickled leaf)."""

    __slots__ = ("key", "value")

    def __init__(self, value: Any, key: str | None = None) -> None:
        self.value = value
        self.key = key

    def decode(self) -> Any:
        decoded = decode_value(self.value)
        return decoded if self.key is None else decoded[self.key]

    def __reduce__(self) -> tuple[Any, tuple[Any, str | None]]:
        return (WireValue, (self.value, self.key))

    def __repr__(self) -> str:
        return f"<WireValue of a stored output{'' if self.key is None else ' ' + self.key}>"


def _is_json_native(value: Any) -> bool:
    # Exact types only: a subclass of str or dict (an Enum, an OrderedDict, a LangChain object)
    # would lose its type in JSON.
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return True
    if t is float:
        return math.isfinite(value)
    return False


def encode_value(value: Any) -> Any:
    """Return a JSON-able form of ``value`` that :func:`decode_value` turns back into it.

    Raises whatever cloudpickle raises for a value that cannot be pickled at all (a lock, a
    generator); callers report that as the task's error.
    """
    if _is_json_native(value):
        return value
    t = type(value)
    if t is list:
        return [encode_value(v) for v in value]
    if t is dict and all(type(k) is str for k in value) and not _has_marker(value):
        return {k: encode_value(v) for k, v in value.items()}
    if t is SealedValue:
        # Already the task's pickle: pass it on unopened, the client opens it.
        return {PICKLE_KEY: base64.b64encode(value.data).decode("ascii")}
    if isinstance(value, LargeValue):
        return LargeValueLeaf(value)
    return {PICKLE_KEY: dumps_b64(value)}


def _has_marker(value: dict[str, Any]) -> bool:
    # A user's dict that looks like one of the wire's own leaves travels pickled instead, so
    # that it can never be mistaken for one.
    return PICKLE_KEY in value or REF_KEY in value


def decode_value(value: Any) -> Any:
    """Inverse of :func:`encode_value`. A large value's leaf stays a leaf (:func:`is_ref_leaf`):
    only the client that holds a connection can fetch what it stands for."""
    t = type(value)
    if t is list:
        return [decode_value(v) for v in value]
    if t is dict:
        if len(value) == 1 and PICKLE_KEY in value:
            return loads_b64(value[PICKLE_KEY])
        return {k: decode_value(v) for k, v in value.items()}
    return value
