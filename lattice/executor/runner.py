"""Runs one submission where it lands (a thread, a Ray worker, a sandbox child).

Never raises for a task's own failure: the exception becomes a :class:`TaskErrorInfo` with the
type, message and the traceback of the user's frames, so it travels as data.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import cloudpickle

from lattice.context import TaskContext, takes_context
from lattice.exceptions import TaskErrorInfo
from lattice.executor.base import TaskKind, TaskOutcome, TaskSubmission
from lattice.serialization import LargeValue, WireValue, decode_value, dumps_b64, loads_b64
from lattice.vocabulary import _CURRENT_ATTEMPT

_MAX_PICKLED_ERROR = 256 * 1024


class OutputError(Exception):
    """A task returned something that does not match its declared outputs."""


@functools.lru_cache(maxsize=512)
def load_function(code_id: str, code: bytes) -> Callable[..., Any]:
    """Unpickle a task function once per process (keyed by its digest)."""
    func = cloudpickle.loads(code)
    if not callable(func):
        raise TypeError(f"serialized code is a {type(func).__name__}, not a function")
    return func


def error_info(exc: BaseException, *, skip_frames: int = 1) -> TaskErrorInfo:
    """Describe ``exc`` as data; drop the first ``skip_frames`` frames (the runner's own)."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    pickled: str | None = None
    try:
        candidate = dumps_b64(exc)
        if len(candidate) <= _MAX_PICKLED_ERROR:
            loads_b64(candidate)  # only ship what a client can load back
            pickled = candidate
    except Exception:  # noqa: BLE001 - an unpicklable exception still travels as text
        pickled = None
    return TaskErrorInfo(type=type(exc).__name__, message=str(exc), traceback=text, pickled=pickled)


def check_outputs(result: Any, outputs: tuple[str, ...], task_name: str) -> Any:
    """Match a task's return value to its declared outputs.

    A dict must hold every declared key (extra keys are kept). With exactly one declared
    output, a return value that is not a dict (or an empty dict) is taken as that output;
    a non-empty dict without the key is an error, since it most likely misnames it.
    """
    if not outputs:
        return result
    if isinstance(result, dict) and all(k in result for k in outputs):
        return result
    if len(outputs) == 1 and not (isinstance(result, dict) and len(result) > 0):
        return {outputs[0]: result}
    if isinstance(result, dict):
        missing = [k for k in outputs if k not in result]
        raise OutputError(
            f"task {task_name} returned keys {sorted(map(str, result))} but is missing declared "
            f"output(s) {missing}"
        )
    raise OutputError(
        f"task {task_name} returned {type(result).__name__}; expected a dict with keys {list(outputs)}"
    )


@contextmanager
def _gpu_env(gpu_ids: tuple[int, ...], enabled: bool) -> Iterator[None]:
    if not enabled or not gpu_ids:
        yield
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


def _call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    result = func(*args, **kwargs)
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _upstream_value(value: Any) -> Any:
    if isinstance(value, LargeValue):
        return value.load()
    if isinstance(value, WireValue):
        return value.decode()
    return value


def merge_inputs(user: dict[str, Any] | None, upstream: dict[str, Any] | None) -> dict[str, Any]:
    params = decode_value(user) if user else {}
    if upstream:
        # An earlier task's large output is kept as a LargeValue (see large_values): the task
        # gets the value.
        # An output read back from the head's store after a restart is decoded here.
        params.update({k: _upstream_value(v) for k, v in upstream.items()})
    return params


def _decode(sub: TaskSubmission, ctx: TaskContext) -> Callable[[], Any]:
    """Unpickle what ``sub`` carries (its function, its inputs: this imports the modules they
    come from); return the call that runs it. A code task whose function takes a second
    parameter gets ``ctx``."""
    func = load_function(sub.code_id, sub.code)
    if sub.kind is TaskKind.CODE:
        params = merge_inputs(sub.user_inputs, sub.upstream_inputs)
        args: tuple[Any, ...] = (params, ctx) if takes_context(func) else (params,)
        return lambda: check_outputs(_call(func, *args), sub.outputs, sub.task_name)
    if sub.kind is TaskKind.BATCH:
        batch = [
            merge_inputs(u, p) for u, p in zip(sub.user_inputs, sub.upstream_inputs, strict=True)
        ]
        return functools.partial(_call_batch, func, batch, sub)
    args = cloudpickle.loads(sub.args) if sub.args else ()
    kwargs = cloudpickle.loads(sub.kwargs) if sub.kwargs else {}
    return lambda: _call(func, *args, **kwargs)


def _call_batch(func: Callable[..., Any], batch: list[dict[str, Any]], sub: TaskSubmission) -> Any:
    results = _call(func, batch)
    if not isinstance(results, list | tuple) or len(results) != len(batch):
        got = len(results) if isinstance(results, list | tuple) else type(results).__name__
        raise OutputError(
            f"batch task {sub.task_name} got {len(batch)} inputs and must return a list of "
            f"{len(batch)} results, returned {got}"
        )
    return [check_outputs(r, sub.outputs, sub.task_name) for r in results]


def execute(
    sub: TaskSubmission,
    *,
    set_gpu_env: bool = True,
    decoding: AbstractContextManager[Any] | None = None,
    cancelled: threading.Event | None = None,
) -> TaskOutcome:
    """Run ``sub`` here and now. ``set_gpu_env`` exports CUDA_VISIBLE_DEVICES (process-wide,
    so only where one task owns the process: a Ray worker or a sandbox child).

    ``decoding`` (a lock shared by the threads of one process) is held while the task's
    function and inputs are unpickled: unpickling imports their modules, and threads that
    import a package with circular imports at the same moment can see one of its modules
    half-initialised (Python breaks the cycle between their import locks by handing one of
    them the partial module). Held for the decoding only, never while the task runs.

    ``cancelled`` is the task's cancellation token (:meth:`TaskContext.is_cancelled`), set by
    the executor that runs it.
    """
    start = time.perf_counter()
    token = _CURRENT_ATTEMPT.set(sub.attempt)
    ctx = TaskContext(sub.attempt, sub.task_name, cancelled)
    try:
        with _gpu_env(sub.node.gpu_ids, set_gpu_env):
            with decoding if decoding is not None else nullcontext():
                call = _decode(sub, ctx)
            value = call()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a task's failure is data
        return TaskOutcome(
            error=error_info(exc, skip_frames=3), duration=time.perf_counter() - start
        )
    finally:
        _CURRENT_ATTEMPT.reset(token)
    directives = ctx.directives()
    return TaskOutcome(
        value=value,
        duration=time.perf_counter() - start,
        directives=None if directives.empty else directives,
    )
