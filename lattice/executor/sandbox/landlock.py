"""Landlock (Linux >= 5.13) through raw system calls: the filesystem and process side of the
seccomp level.

seccomp filters system calls by number and plain arguments; it cannot see paths, and it cannot
tell the server's pid from the task's own children. Landlock can: once a process restricts
itself, it can no longer ptrace (nor read ``/proc/<pid>/mem`` or ``environ`` of) any process
outside its domain, writes and reads are confined to the paths allowed below, and from ABI 6 on
it cannot signal processes outside its domain either. Nothing here needs privileges.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass

from lattice.executor.sandbox._linux import syscall as _syscall

_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

# filesystem access rights (include/uapi/linux/landlock.h)
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
# IOCTL_DEV (ABI 5) is deliberately not handled: GPU drivers talk through ioctls on /dev nodes.

_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1

READ = EXECUTE | READ_FILE | READ_DIR
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is missing or disabled."""
    try:
        return _syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


def _fs_rights(abi: int) -> int:
    rights = READ | WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_CHAR | MAKE_DIR | MAKE_REG
    rights |= MAKE_SOCK | MAKE_FIFO | MAKE_BLOCK | MAKE_SYM
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    return rights


@dataclass(frozen=True)
class LandlockResult:
    abi: int
    #: signals to processes outside the sandbox are refused by Landlock (ABI >= 6)
    scopes_signals: bool


def restrict_self(read_paths: Iterable[str], write_paths: Iterable[str]) -> LandlockResult:
    """Confine the calling thread (and what it forks) to reading ``read_paths`` and writing
    ``write_paths``; TCP bind/connect and, where supported, signals and abstract unix sockets
    outside the domain are refused. Threads started earlier are not confined.

    Needs ``PR_SET_NO_NEW_PRIVS`` already set. Paths that do not exist are skipped. Raises
    :class:`OSError` when Landlock is unavailable (``abi_version() == 0``) or a call fails.
    """
    abi = abi_version()
    if abi == 0:
        raise OSError(errno.EOPNOTSUPP, "Landlock is not available in this kernel")
    handled = _fs_rights(abi)
    attr = _RulesetAttr(handled_access_fs=handled)
    if abi >= 4:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL
    ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    try:
        for path, rights in [(p, READ) for p in read_paths] + [(p, handled) for p in write_paths]:
            _allow(ruleset, path, rights & handled)
        _syscall(_SYS_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)
    return LandlockResult(abi=abi, scopes_signals=abi >= 6)


def _allow(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        rule = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        _syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
    finally:
        os.close(fd)
