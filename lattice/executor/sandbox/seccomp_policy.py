"""The seccomp policy of the ``seccomp`` level, as data, and the filter built from it.

Default allow, with a deny list: a task is ordinary Python (imports, threads, numpy, asyncio)
and must keep working; what it must not do is reach the network or other processes, or change
the machine. Two ways to refuse, chosen per group:

* ``EPERM``: the call fails and Python raises ``PermissionError``. Used where libraries probe
  and cope (sockets, namespaces, keyrings, perf counters, io_uring).
* ``KILL``: the whole task process dies with SIGSYS, reported as a forbidden system call. Used
  for calls with no business in a task whose only use here is attacking the host (ptrace,
  mounting, loading modules, rebooting).

Syscalls of any other ABI (i386 through ``int 0x80``, x32 with the 0x40000000 bit) hit the
bad-architecture action, which is KILL as well: the filter only knows the native ABI, and
libseccomp rejects x32 numbers on x86_64 unless x32 is added explicitly.

docs/sandbox.md renders :data:`RULES` as a table; keep the two in step.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Any

#: clone(2) flags that create namespaces: an unprivileged user namespace is the usual first
#: step of a kernel exploit, and the others would let a task step out of the server's view.
_CLONE_NS_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}


@dataclass(frozen=True)
class Rule:
    syscalls: tuple[str, ...]
    action: str  # "EPERM", "KILL" or "ENOSYS"
    why: str
    #: human form of the argument condition, for the docs; empty = always
    when: str = ""


RULES: tuple[Rule, ...] = (
    Rule(
        ("socket",),
        "EPERM",
        "no new network sockets of any family (inet, inet6, unix, packet, netlink, ...)",
    ),
    Rule(
        ("socketpair",),
        "EPERM",
        "only AF_UNIX pairs, which reach nothing outside",
        "domain != AF_UNIX",
    ),
    Rule(
        ("io_uring_setup", "io_uring_enter", "io_uring_register"),
        "EPERM",
        "io_uring performs socket and file operations that seccomp cannot see",
    ),
    Rule(("unshare", "setns"), "EPERM", "no namespace changes"),
    Rule(("clone",), "EPERM", "no new namespaces", "flags & CLONE_NEW* != 0"),
    Rule(
        ("clone3",),
        "ENOSYS",
        "its flags sit in memory seccomp cannot read; libc falls back to clone",
    ),
    Rule(
        ("keyctl", "add_key", "request_key"),
        "EPERM",
        "kernel keyrings hold other processes' secrets",
    ),
    Rule(("perf_event_open",), "EPERM", "performance counters observe other processes"),
    Rule(("userfaultfd",), "EPERM", "a staple of kernel exploits"),
    Rule(("pidfd_getfd",), "EPERM", "would copy file descriptors out of other processes"),
    Rule(
        ("ptrace", "process_vm_readv", "process_vm_writev"),
        "KILL",
        "no reading or writing other processes' memory (the server's, the Ray worker's)",
    ),
    Rule(
        (
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
        ),
        "KILL",
        "no mount table changes",
    ),
    Rule(("init_module", "finit_module", "delete_module"), "KILL", "no kernel module loading"),
    Rule(("reboot", "kexec_load", "kexec_file_load"), "KILL", "no reboot or kernel replacement"),
    Rule(("swapon", "swapoff"), "KILL", "no swap changes"),
    Rule(("bpf",), "KILL", "no eBPF programs"),
    Rule(("iopl", "ioperm"), "KILL", "no raw I/O port access"),
    Rule(("open_by_handle_at",), "KILL", "opens files by handle, bypassing path checks"),
)

#: Used only where Landlock cannot scope signals (kernel < 6.12): signals go to the task's own
#: process only, never to its parent, the server or anyone else.
SIGNAL_RULES: tuple[Rule, ...] = (
    Rule(
        ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"),
        "EPERM",
        "signals only to itself",
        "pid != own pid",
    ),
    Rule(("tkill", "pidfd_send_signal"), "EPERM", "cannot be checked against the own pid"),
)


def _action(module: Any, name: str) -> int:
    if name == "KILL":
        return int(module.KILL_PROCESS)
    if name == "ENOSYS":
        return int(module.ERRNO(errno.ENOSYS))
    return int(module.ERRNO(errno.EPERM))


def build_filter(own_pid: int, *, restrict_signals: bool) -> Any:
    """A loaded-ready ``pyseccomp.SyscallFilter`` for the task process ``own_pid``.

    ``restrict_signals`` adds :data:`SIGNAL_RULES`. Syscalls the installed libseccomp does not
    know (older versions) are skipped: such a kernel or library cannot run them either.
    Raises ImportError when pyseccomp or libseccomp is missing.
    """
    import pyseccomp as seccomp

    filt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    filt.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    filt.set_attr(seccomp.Attr.CTL_NNP, 1)
    native = seccomp.Arch.NATIVE
    rules = RULES + (SIGNAL_RULES if restrict_signals else ())
    for rule in rules:
        action = _action(seccomp, rule.action)
        for name in rule.syscalls:
            if seccomp.resolve_syscall(native, name) < 0:
                continue
            if name == "socketpair":
                filt.add_rule(action, name, seccomp.Arg(0, seccomp.NE, socket.AF_UNIX))
            elif name == "clone":
                for flag in _CLONE_NS_FLAGS.values():
                    filt.add_rule(action, name, seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
            elif rule.when == "pid != own pid":
                filt.add_rule(action, name, seccomp.Arg(0, seccomp.LT, own_pid))
                filt.add_rule(action, name, seccomp.Arg(0, seccomp.GT, own_pid))
            else:
                filt.add_rule(action, name)
    return filt


def seccomp_unavailable() -> str | None:
    """None when a filter can be built here, else why not (for a clear error up front)."""
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, RuntimeError, OSError) as exc:
        return (
            f"the seccomp sandbox needs pyseccomp and libseccomp ({exc}); install "
            "'lattice[seccomp]' and the system package libseccomp2"
        )
    return None
