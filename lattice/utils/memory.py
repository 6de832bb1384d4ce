"""Giving freed memory back to the operating system."""

from __future__ import annotations

import ctypes


def return_free_memory() -> bool:
    """Ask the C allocator to hand the free parts of the heap back to the OS.

    After a large run is retired, its objects are freed but glibc keeps the pages for reuse,
    so the process's resident size stays at its peak; ``malloc_trim`` releases them. Returns
    whether it could be asked (False where the C library has no ``malloc_trim``, e.g. musl
    or macOS).
    """
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own C library
    if trim is None:
        return False
    trim(0)
    return True
