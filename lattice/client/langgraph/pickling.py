"""Pickling a node's code and arguments so that the worker can load them.

The worker cannot import the user's project. cloudpickle carries a module's functions and
classes by value only if the module is registered, and ``serialize_function`` registers the
node's own module. A graph's state often holds classes from other modules of the project (a
dataclass in ``state.py``, nodes in ``nodes.py``), so this pickler registers the module of
every class and function it meets that is the user's own, before cloudpickle decides how to
pickle it.
"""

from __future__ import annotations

import base64
import io
import pickle
import types
from typing import Any

import cloudpickle

from lattice.client.core.code import register_by_value


class _RegisteringPickler(cloudpickle.Pickler):
    def __init__(self, file: io.BytesIO, seen: set[str]) -> None:
        super().__init__(file, protocol=pickle.DEFAULT_PROTOCOL)
        self._seen = seen

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type | types.FunctionType):
            module = getattr(obj, "__module__", None)
            if isinstance(module, str) and module not in self._seen:
                # Registered before it counts as seen: another thread that finds it seen must
                # find it registered. Two threads may both register it; that is idempotent.
                register_by_value(obj)
                self._seen.add(module)
        return super().reducer_override(obj)


class ArgumentPickler:
    """Base64 cloudpickle (the wire form of ``code_ser``, ``args`` and ``kwargs``) that also
    carries the user's own modules by value. Thread-safe."""

    def __init__(self) -> None:
        # Module names already looked at: each is checked (and maybe registered) once.
        self._seen: set[str] = set()

    def dumps(self, obj: Any) -> bytes:
        """Raises what cloudpickle raises for an object that cannot be pickled."""
        buffer = io.BytesIO()
        _RegisteringPickler(buffer, self._seen).dump(obj)
        return buffer.getvalue()

    def dumps_b64(self, obj: Any) -> str:
        """:meth:`dumps` as base64 text."""
        return base64.b64encode(self.dumps(obj)).decode("ascii")
