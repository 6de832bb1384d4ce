"""The few libc calls the sandbox needs that :mod:`os` does not offer (prctl, capset, mallopt,
raw syscalls), through ctypes. Linux only; the handle to libc is opened on first use."""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# securebits: uid 0 gains no capabilities on execve, and this cannot be undone
_SECURE_NOROOT = 1 << 0
_SECURE_NOROOT_LOCKED = 1 << 1
_SECURE_NO_SETUID_FIXUP = 1 << 2
_SECURE_NO_SETUID_FIXUP_LOCKED = 1 << 3
_SECURE_KEEP_CAPS_LOCKED = 1 << 5
_SECURE_NO_CAP_AMBIENT_RAISE = 1 << 6
_SECURE_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_M_ARENA_MAX = -8


@functools.lru_cache(maxsize=1)
def libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    lib.prctl.restype = ctypes.c_int
    return lib


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def syscall(number: int, *args: Any) -> int:
    """``syscall(2)``; plain ints are passed as C longs. Raises OSError on failure."""
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return _check(int(libc().syscall(ctypes.c_long(number), *converted)))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    values = (ctypes.c_ulong(v) for v in (arg2, arg3, arg4, arg5))
    return _check(int(libc().prctl(ctypes.c_int(option), *values)))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_all_capabilities() -> None:
    """Leave the calling process with no capabilities, now or after any execve.

    For a root process this is what makes rlimits binding (``CAP_SYS_RESOURCE`` raises them)
    and keeps it from mounting, loading modules, or tracing processes that hold capabilities.
    Must run before seccomp/landlock and while the process still has ``CAP_SETPCAP``.
    """
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    prctl(
        PR_SET_SECUREBITS,
        _SECURE_NOROOT
        | _SECURE_NOROOT_LOCKED
        | _SECURE_NO_SETUID_FIXUP
        | _SECURE_NO_SETUID_FIXUP_LOCKED
        | _SECURE_KEEP_CAPS_LOCKED
        | _SECURE_NO_CAP_AMBIENT_RAISE
        | _SECURE_NO_CAP_AMBIENT_RAISE_LOCKED,
    )
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(version=_LINUX_CAPABILITY_VERSION_3, pid=0)
    data = (_CapData * 2)()
    _check(int(libc().capset(ctypes.byref(header), ctypes.byref(data))))


def limit_malloc_arenas(count: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas: each reserves 64 MB of address space, which
    RLIMIT_AS counts, so a few threads would otherwise exhaust a modest memory limit."""
    libc().mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(count))
