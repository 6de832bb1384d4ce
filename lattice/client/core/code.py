"""Shipping a function to the server: cloudpickle by value, source beside it."""

from __future__ import annotations

import functools
import inspect
import os
import site
import sys
import sysconfig
import textwrap
import types
from collections.abc import Callable
from typing import Any

import cloudpickle

from lattice.serialization import dumps_b64


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    """Where the stdlib and installed packages live (fixed for the life of the process)."""
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    paths.add(site.getusersitepackages() if hasattr(site, "getusersitepackages") else "")
    return tuple(os.path.realpath(p) for p in paths if p)


def _is_users_own(module: types.ModuleType) -> bool:
    """A module of the user's project (not the stdlib, not an installed package, not Lattice)."""
    name = module.__name__
    if name == "__main__" or name.split(".")[0] in ("lattice", "cloudpickle"):
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    real = os.path.realpath(path)
    return not real.startswith(_installed_roots())


def register_by_value(func: Callable[..., Any]) -> None:
    """Make cloudpickle carry ``func``'s module by value if it is the user's own code, so the
    server (which cannot import the user's project) can load it."""
    module = sys.modules.get(getattr(func, "__module__", "") or "")
    if module is not None and _is_users_own(module):
        cloudpickle.register_pickle_by_value(module)


def serialize_function(func: Callable[..., Any]) -> tuple[str | None, str]:
    """Return ``(source or None, base64 cloudpickle)`` for ``func``."""
    register_by_value(func)
    try:
        source: str | None = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        source = None
    return source, dumps_b64(func)
