"""Giving freed memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc only
    return trim if callable(trim) else None


def return_free_memory() -> bool:
    """Ask the C allocator to hand the free parts of the heap back to the OS.

    After a large run is retired, its objects are freed but glibc keeps the pages for reuse,
    so the process's resident size stays at its peak; ``malloc_trim`` releases them. Returns
    whether it could be asked (False where the C library has no ``malloc_trim``).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
