"""How a sandboxed task ended, said as a clear error: pure functions, no I/O.

A limit the kernel enforces shows up in one of two ways: the task's own code sees an error
(MemoryError under RLIMIT_AS, EAGAIN from fork under the process limit, EMFILE, EFBIG, EPERM
from seccomp) or the task process dies by a signal (SIGXCPU or SIGKILL for CPU time, SIGSYS for
a forbidden system call). Both are turned into a :class:`TaskErrorInfo` whose ``type`` names
the limit and whose message says what to change.
"""

from __future__ import annotations

import errno
import signal

from lattice.exceptions import TaskErrorInfo
from lattice.executor.base import TaskOutcome
from lattice.executor.sandbox.wire import ChildEnd
from lattice.vocabulary import SandboxLevel, SandboxSpec

CANCELLED = "TaskCancelledError"
CPU_TIME_LIMIT = "CpuTimeLimitExceeded"
MEMORY_LIMIT = "MemoryLimitExceeded"
PROCESS_LIMIT = "ProcessLimitExceeded"
OPEN_FILES_LIMIT = "OpenFilesLimitExceeded"
FILE_SIZE_LIMIT = "FileSizeLimitExceeded"
FORBIDDEN_SYSCALL = "ForbiddenSystemCall"
CHILD_DIED = "SandboxChildDied"
SANDBOX_ERROR = "SandboxError"

_SECCOMP_HINTS = {
    errno.EPERM: (
        " (the seccomp sandbox refuses network sockets, namespace changes and signals to other "
        "processes; see docs/sandbox.md)"
    ),
    errno.EACCES: (
        " (at the seccomp level a task writes only in its own directory and reads only the "
        "import path and system files; see docs/sandbox.md)"
    ),
}
_TAIL_CHARS = 2000


def _errno_of(info: TaskErrorInfo) -> int | None:
    """The errno of an OSError described as data (its message reads ``[Errno N] ...``)."""
    if not info.message.startswith("[Errno "):
        return None
    number, _, _ = info.message[len("[Errno ") :].partition("]")
    return int(number) if number.isdigit() else None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _with_tail(message: str, tail: str) -> str:
    tail = tail.strip()
    if not tail:
        return message
    return f"{message}\n--- last output of the task ---\n{tail[-_TAIL_CHARS:]}"


def _limit_error(kind: str, message: str, original: TaskErrorInfo) -> TaskErrorInfo:
    # The pickled original is dropped on purpose: a client would re-raise a bare MemoryError
    # or OSError, hiding that a sandbox limit was the cause.
    return TaskErrorInfo(
        type=kind,
        message=f"{message} ({original.type}: {original.message})",
        traceback=original.traceback,
    )


def explain_task_error(info: TaskErrorInfo, spec: SandboxSpec, end: ChildEnd) -> TaskErrorInfo:
    """Name the sandbox limit behind an exception the task raised, if one is behind it."""
    code = _errno_of(info)
    if spec.memory_limit_mb and info.type.endswith("MemoryError"):
        return _limit_error(
            MEMORY_LIMIT, f"the task exceeded its memory limit of {spec.memory_limit_mb} MB", info
        )
    forked = "fork" in info.traceback or "start_new_thread" in info.traceback
    if end.process_limit_hit or (code == errno.EAGAIN and forked):
        return _limit_error(
            PROCESS_LIMIT,
            f"the task reached its limit of {spec.max_processes} processes and threads",
            info,
        )
    if info.type == "RuntimeError" and "can't start new thread" in info.message:
        if spec.memory_limit_mb:
            return _limit_error(
                MEMORY_LIMIT,
                f"a new thread did not fit in the memory limit of {spec.memory_limit_mb} MB "
                f"(or the limit of {spec.max_processes} processes and threads was reached)",
                info,
            )
        return _limit_error(
            PROCESS_LIMIT,
            f"the task reached its limit of {spec.max_processes} processes and threads",
            info,
        )
    if code == errno.EMFILE:
        return _limit_error(
            OPEN_FILES_LIMIT,
            f"the task reached its limit of {spec.max_open_files} open files",
            info,
        )
    if code == errno.EFBIG:
        return _limit_error(
            FILE_SIZE_LIMIT,
            f"the task wrote past its file size limit of {spec.max_file_size_mb} MB",
            info,
        )
    hint = _SECCOMP_HINTS.get(code) if spec.level is SandboxLevel.SECCOMP and code else None
    if hint is not None:
        return TaskErrorInfo(
            type=info.type,
            message=info.message + hint,
            traceback=info.traceback,
            pickled=info.pickled,
        )
    return info


def explain_death(spec: SandboxSpec, end: ChildEnd) -> TaskErrorInfo:
    """Why the task process ended without sending an outcome."""
    if end.supervisor_error is not None:
        return TaskErrorInfo.framework(
            SANDBOX_ERROR, f"the sandbox could not run the task: {end.supervisor_error}"
        )
    sig = end.signal
    cpu_limit = spec.cpu_time_limit
    if sig == signal.SIGXCPU or (
        sig == signal.SIGKILL and cpu_limit is not None and end.cpu_seconds >= cpu_limit - 0.05
    ):
        return TaskErrorInfo.framework(
            CPU_TIME_LIMIT,
            f"the task used more than its CPU time limit of {cpu_limit:g} s "
            f"({end.cpu_seconds:.2f} s of CPU) and was stopped",
        )
    if sig == signal.SIGSYS:
        return TaskErrorInfo.framework(
            FORBIDDEN_SYSCALL,
            _with_tail(
                "the task made a system call the seccomp policy forbids (ptrace, mount, module "
                "loading, reboot, bpf, a foreign ABI, ...) and was killed; see docs/sandbox.md",
                end.output_tail,
            ),
        )
    if sig == signal.SIGXFSZ:
        return TaskErrorInfo.framework(
            FILE_SIZE_LIMIT,
            f"the task wrote past its file size limit of {spec.max_file_size_mb} MB",
        )
    if sig is not None:
        message = f"the task process was killed by {_signal_name(sig)} before it reported a result"
        if spec.memory_limit_mb and sig in (
            signal.SIGKILL,
            signal.SIGSEGV,
            signal.SIGBUS,
            signal.SIGABRT,
        ):
            message += (
                f"; with a memory limit of {spec.memory_limit_mb} MB, running out of memory "
                "(an allocation failing in native code, or the kernel's OOM killer) is the likely cause"
            )
        return TaskErrorInfo.framework(CHILD_DIED, _with_tail(message, end.output_tail))
    return TaskErrorInfo.framework(
        CHILD_DIED,
        _with_tail(
            f"the task process exited with code {end.exit_code} without a result "
            "(os._exit, sys.exit in a forked child, or a fatal error in native code)",
            end.output_tail,
        ),
    )


def explain_lost_supervisor(returncode: int | None, detail: str) -> TaskErrorInfo:
    """The supervisor itself ended without a whole report."""
    if returncode is not None and returncode < 0:
        return TaskErrorInfo.framework(
            CHILD_DIED,
            f"the sandbox supervisor was killed by {_signal_name(-returncode)} before the task "
            "finished; a task that signals its parent process (os.kill(os.getppid(), ...)) "
            "ends this way. The server is not affected.",
        )
    return TaskErrorInfo.framework(
        SANDBOX_ERROR,
        f"the sandbox supervisor exited with code {returncode} without a report: {detail}",
    )


def cancelled() -> TaskOutcome:
    return TaskOutcome(error=TaskErrorInfo.framework(CANCELLED, "task was cancelled"))


def judge(spec: SandboxSpec, end: ChildEnd, outcome: TaskOutcome | None) -> TaskOutcome:
    """The outcome to report, from the supervisor's facts and the task's own outcome (if any)."""
    if outcome is None:
        return TaskOutcome(error=explain_death(spec, end))
    if outcome.error is not None:
        return TaskOutcome(
            error=explain_task_error(outcome.error, spec, end), duration=outcome.duration
        )
    return outcome
