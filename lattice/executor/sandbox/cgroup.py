"""A pids cgroup per sandboxed task, where the machine lets us make one.

RLIMIT_NPROC is the portable process limit, but the kernel does not apply it to uid 0, and for
other users it counts every process of the user, not of the task. A pids cgroup counts exactly
the task's processes and threads, for any user, and also finds every one of them at the end
(even those that left the process group), so nothing outlives the task. It needs a writable
pids hierarchy: cgroup v1's ``pids`` controller, or a v2 cgroup with ``pids`` delegated to
its children. Without one, the limit falls back to RLIMIT_NPROC.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import time
from pathlib import Path

_DIR_NAME = "lattice-sandbox"


def _own_pids_cgroup() -> Path | None:
    """The directory of the pids cgroup this process is in, if such a hierarchy is mounted."""
    try:
        with open("/proc/self/cgroup") as f:
            memberships = [line.rstrip("\n").split(":", 2) for line in f]
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    v1_path = next((m[2] for m in memberships if len(m) == 3 and "pids" in m[1].split(",")), None)
    v2_path = next((m[2] for m in memberships if len(m) == 3 and m[0] == "0" and m[1] == ""), None)
    for fields in mounts:
        sep = fields.index("-")
        fstype, super_opts = fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else ""
        root, mountpoint = fields[3], fields[4]
        if fstype == "cgroup" and v1_path is not None and "pids" in super_opts.split(","):
            return _join(mountpoint, root, v1_path)
        if fstype == "cgroup2" and v2_path is not None:
            path = _join(mountpoint, root, v2_path)
            try:
                delegated = "pids" in (path / "cgroup.subtree_control").read_text().split()
            except OSError:
                delegated = False
            if delegated:
                return path
    return None


def _join(mountpoint: str, root: str, member: str) -> Path:
    rel = os.path.relpath(member, root) if root != "/" else member.lstrip("/")
    return Path(mountpoint) / ("" if rel == "." else rel)


def cgroup_base() -> Path | None:
    """Where per-task pids cgroups go (created on first call), or None if unavailable."""
    own = _own_pids_cgroup()
    if own is None:
        return None
    base = own / _DIR_NAME
    try:
        base.mkdir(exist_ok=True)
    except OSError:
        return None
    return base if os.access(base, os.W_OK) else None


class TaskCgroup:
    """The pids cgroup of one task, named after the sandbox supervisor's pid."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def at(cls, base: Path, supervisor_pid: int) -> TaskCgroup:
        return cls(base / f"task-{supervisor_pid}")

    @classmethod
    def create(cls, base: Path, supervisor_pid: int, max_tasks: int) -> TaskCgroup | None:
        """Make the cgroup with ``pids.max = max_tasks``; None if the kernel refuses."""
        group = cls.at(base, supervisor_pid)
        try:
            try:
                group.path.mkdir()
            except FileExistsError:
                # left over from a supervisor with the same pid that was killed
                group.destroy()
                group.path.mkdir()
            (group.path / "pids.max").write_text(str(max_tasks))
        except OSError:
            group.destroy()
            return None
        return group

    def join(self) -> None:
        """Move the calling process into this cgroup (its children follow)."""
        (self.path / "cgroup.procs").write_text("0")

    def limit_hit(self) -> bool:
        """Whether a fork or thread creation was refused by ``pids.max``."""
        try:
            for line in (self.path / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value) > 0
        except (OSError, ValueError):
            return False
        return False

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def kill_all(self, deadline: float = 10.0) -> bool:
        """SIGKILL every process in the cgroup until it is empty; False if some survive
        ``deadline`` seconds (stuck in the kernel). Reaping is the caller's business."""
        kill_file = self.path / "cgroup.kill"
        end = time.monotonic() + deadline
        while True:
            pids = self.pids()
            if not pids:
                return True
            if kill_file.exists():
                with contextlib.suppress(OSError):
                    kill_file.write_text("1")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            left = end - time.monotonic()
            if left <= 0 or not _wait_for_exits(pids, left):
                return False

    def destroy(self) -> None:
        """Kill what is left and remove the directory; missing is fine."""
        if not self.path.exists():
            return
        self.kill_all()
        try:
            self.path.rmdir()
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise


def process_limit_unavailable() -> str | None:
    """None when a sandboxed task's process limit is enforced here, else why it is not."""
    if os.geteuid() == 0 and cgroup_base() is None:
        return (
            "the server runs as root without a writable pids cgroup, and the kernel never "
            "applies RLIMIT_NPROC to uid 0"
        )
    return None


def _wait_for_exits(pids: list[int], timeout: float) -> bool:
    """Block until each of ``pids`` has exited (SIGKILL is delivered asynchronously), or
    ``timeout`` seconds have passed: each process's pidfd becomes readable when it exits.
    False if no process could be waited for (a kernel without pidfds)."""
    fds: list[int] = []
    try:
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                continue  # already gone
            except OSError:
                return False
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        end = time.monotonic() + timeout
        waiting = len(fds)
        while waiting and (left := end - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                waiting -= 1
        return True
    finally:
        for fd in fds:
            os.close(fd)
