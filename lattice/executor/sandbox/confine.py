"""Confining the task process: runs in the forked task process, before any of the task's code.

Order matters: rlimits first (while the process may still set hard limits), then, for root,
dropping every capability (so the limits cannot be raised again), then no-new-privs, then for
the seccomp level Landlock and the seccomp filter last (the filter itself forbids nothing the
steps before need, but building it loads libseccomp).
"""

from __future__ import annotations

import functools
import math
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

from lattice.executor.sandbox import _linux, landlock
from lattice.executor.sandbox.seccomp_policy import build_filter
from lattice.vocabulary import SandboxLevel, SandboxSpec

MB = 1024 * 1024

# What the task may read at the seccomp level besides the import path and its own directory:
# the system's libraries and the bits of /etc, /dev and /proc that ordinary programs consult.
# Everything else (home directories, /tmp, /var, /run, the server's /proc entries, data
# directories) is out of sight.
_SYSTEM_DIRS = (
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/bin",
    "/sbin",
    "/sys",
    "/nix/store",
)
_ETC = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "zoneinfo",
    "passwd",
    "group",
    "nsswitch.conf",
    "hosts",
    "host.conf",
    "resolv.conf",
    "gai.conf",
    "os-release",
    "mime.types",
    "locale.alias",
    "locale.conf",
    "ssl/certs",
    "ca-certificates",
    "matplotlibrc",
)
_DEV = ("null", "zero", "full", "random", "urandom")
_PROC = ("cpuinfo", "meminfo", "stat", "loadavg", "uptime", "version", "filesystems", "sys")


@dataclass(frozen=True)
class Confinement:
    """What was applied, for the report."""

    process_limit: str  # "cgroup", "rlimit" or "none"
    landlock_abi: int = 0
    signals_scoped: bool = False


def _set(limit: int, value: int) -> None:
    _soft, hard = resource.getrlimit(limit)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(limit, (value, value))


def _user_task_count(uid: int) -> int:
    """Processes and threads owned by ``uid`` now: RLIMIT_NPROC counts all of them."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[17])  # num_threads, the 20th field of stat(5)
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    return total


def apply_rlimits(spec: SandboxSpec, in_cgroup: bool) -> str:
    """Set the task's resource limits; returns how the process limit is enforced."""
    _set(resource.RLIMIT_CORE, 0)  # SIGXCPU and SIGSYS dump core by default
    if spec.cpu_time_limit is not None:
        soft = max(1, math.ceil(spec.cpu_time_limit))
        _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        # soft: SIGXCPU; one second later the kernel sends SIGKILL if SIGXCPU was caught
        if hard == resource.RLIM_INFINITY or hard > soft:
            hard = soft + 1
        resource.setrlimit(resource.RLIMIT_CPU, (min(soft, hard), hard))
    if spec.memory_limit_mb is not None:
        _linux.limit_malloc_arenas()
        _set(resource.RLIMIT_AS, spec.memory_limit_mb * MB)
    if spec.max_open_files is not None:
        _set(resource.RLIMIT_NOFILE, spec.max_open_files)
    if spec.max_file_size_mb is not None:
        _set(resource.RLIMIT_FSIZE, spec.max_file_size_mb * MB)
    if spec.max_processes is None or in_cgroup:
        return "cgroup" if in_cgroup else "none"
    if os.getuid() == 0:
        return "none"  # the kernel never applies RLIMIT_NPROC to uid 0
    _set(resource.RLIMIT_NPROC, _user_task_count(os.getuid()) + spec.max_processes)
    return "rlimit"


@functools.lru_cache(maxsize=1)
def preloaded_module_dirs() -> frozenset[str]:
    """Directories the interpreter has imported from so far, including editable installs
    whose sources sit outside ``sys.path`` (setuptools maps them in a finder's MAPPING).
    Cached: the fork server computes it once, before forking any task."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    dirs.add(os.path.dirname(os.path.realpath(sys.executable)))
    for name, module in list(sys.modules.items()):
        if name.startswith("__editable__") and isinstance(getattr(module, "MAPPING", None), dict):
            dirs.update(str(p) for p in module.MAPPING.values())
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and name.partition(".")[0] == name:
            dirs.add(os.path.dirname(path))
    return frozenset(os.path.realpath(d) for d in dirs)


def readable_paths(workdir: str) -> list[str]:
    """Everything the task may read at the seccomp level."""
    paths = set(preloaded_module_dirs()) | set(_SYSTEM_DIRS)
    paths.update(os.path.realpath(p) for p in sys.path if p)
    # A server started from / with ``python -m`` has / on its import path; that must not
    # open the whole filesystem.
    paths.discard("/")
    paths.update(f"/etc/{p}" for p in _ETC)
    paths.update(f"/dev/{p}" for p in _DEV)
    paths.update(str(p) for p in Path("/dev").glob("nvidia*"))
    paths.update(f"/proc/{p}" for p in _PROC)
    paths.add(f"/proc/{os.getpid()}")
    paths.add(workdir)
    return sorted(paths)


def confine(spec: SandboxSpec, workdir: str, *, in_cgroup: bool) -> Confinement:
    """Apply ``spec`` to the calling (single-threaded, freshly forked) process.

    Raises OSError (or ImportError for a missing pyseccomp) if any step fails; the caller must
    then not run the task.
    """
    process_limit = apply_rlimits(spec, in_cgroup)
    if os.geteuid() == 0:
        _linux.drop_all_capabilities()
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    if spec.level is not SandboxLevel.SECCOMP:
        return Confinement(process_limit=process_limit)
    abi = landlock.abi_version()
    filt = build_filter(os.getpid(), restrict_signals=abi < 6)
    scoped = False
    if abi > 0:
        scoped = landlock.restrict_self(
            readable_paths(workdir), [workdir, "/dev/null"]
        ).scopes_signals
    filt.load()
    return Confinement(process_limit=process_limit, landlock_abi=abi, signals_scoped=scoped)
