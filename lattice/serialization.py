"""Values on the wire: JSON where possible, cloudpickle where not.

Results travel to clients as JSON. A value JSON cannot hold faithfully (a tuple, a set, bytes,
a numpy array, a LangChain message, a dict with non-string keys, NaN) is replaced, at the
smallest enclosing leaf, by ``{"__lattice_pickle__": "<base64 cloudpickle>"}``. A Python client
decodes it back to the original object; other clients still see every JSON-native part.

Code and LangGraph arguments travel as base64 cloudpickle strings (spec/002 ``code_ser``,
``args``, ``kwargs``).
"""

from __future__ import annotations

import base64
import binascii
import math
import pickletools
from typing import Any

import cloudpickle

from lattice.exceptions import InvalidCodeError

PICKLE_KEY = "__lattice_pickle__"


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
    if t is dict and all(type(k) is str for k in value) and PICKLE_KEY not in value:
        return {k: encode_value(v) for k, v in value.items()}
    if t is SealedValue:
        # Already the task's pickle: pass it on unopened, the client opens it.
        return {PICKLE_KEY: base64.b64encode(value.data).decode("ascii")}
    return {PICKLE_KEY: dumps_b64(value)}


def decode_value(value: Any) -> Any:
    """Inverse of :func:`encode_value`."""
    t = type(value)
    if t is list:
        return [decode_value(v) for v in value]
    if t is dict:
        if len(value) == 1 and PICKLE_KEY in value:
            return loads_b64(value[PICKLE_KEY])
        return {k: decode_value(v) for k, v in value.items()}
    return value
