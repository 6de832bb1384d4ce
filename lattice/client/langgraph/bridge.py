"""The graph's side of a remote node call: what of the LangGraph run travels with the call,
and replaying what the node did to its run when the answer comes back.

LangGraph calls a node with its state and, depending on the node's signature, ``config``
(a RunnableConfig whose ``configurable`` holds the run's machinery: the checkpointer, the
write queue, the scratchpad, callbacks), ``writer``, ``runtime``, ``previous``, ``error``.
Only data can travel: callbacks and LangGraph's ``__pregel_*`` internals are dropped from the
config, ``writer`` and ``runtime`` become :class:`Injected` markers that the worker fills in,
and the interrupt scratchpad is sent as a snapshot (:class:`InterruptState`).

Nothing here imports LangGraph or LangChain: if they are not loaded, no graph is running.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from lattice.client.langgraph.wire import (
    CALL_KEY,
    CONF,
    ENVELOPE_KEY,
    INTERNAL_PREFIX,
    KEY_RUNTIME,
    KEY_SCRATCHPAD,
    KEY_SEND,
    CallContext,
    Injected,
    InterruptState,
)

log = logging.getLogger(__name__)

_LC_CONFIG_MODULE = "langchain_core.runnables.config"
#: top-level RunnableConfig keys that cannot travel (live callback managers)
_DROPPED_CONFIG_KEYS = frozenset({"callbacks"})
#: Runtime fields that are live objects of the graph's process
_LOCAL_RUNTIME_FIELDS = frozenset({"store", "stream_writer", "heartbeat", "control"})


@dataclass(frozen=True)
class LocalRun:
    """Handles into the real run, where the node's effects are replayed."""

    scratchpad: Any = None
    send: Callable[[list[Any]], None] | None = None
    writer: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class PreparedCall:
    """A node call ready to pickle: the arguments as they travel, and where effects go."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    local: LocalRun


def _current_config(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    given = kwargs.get("config")
    if isinstance(given, dict) and CONF in given:
        return given  # LangGraph passes the very config its run context holds
    module = sys.modules.get(_LC_CONFIG_MODULE)
    if module is None:
        return None
    current = module.var_child_runnable_config.get()
    return current if isinstance(current, dict) else None


def trim_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without callbacks and LangGraph's internal ``__pregel_*`` configurables."""
    out = {k: v for k, v in config.items() if k not in _DROPPED_CONFIG_KEYS and k != CONF}
    conf = config.get(CONF)
    if isinstance(conf, dict):
        out[CONF] = {k: v for k, v in conf.items() if not str(k).startswith(INTERNAL_PREFIX)}
    return out


def _is_runtime(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and hasattr(value, "stream_writer")


def _pickled_runtime(runtime: Any, dumps: Callable[[Any], bytes], node: str) -> bytes:
    # Pickled apart from the call: its values (LangGraph's ExecutionInfo) would make every
    # worker import LangGraph to unpickle the call, while few nodes read the runtime.
    fields = {
        f.name: getattr(runtime, f.name)
        for f in dataclasses.fields(runtime)
        if f.name not in _LOCAL_RUNTIME_FIELDS
    }
    try:
        return dumps(fields)
    except Exception:  # noqa: BLE001 - a live object in the context: send the rest
        return dumps(_keep_picklable(fields, "runtime fields", node))


def _interrupt_state(scratchpad: Any) -> InterruptState | None:
    resume = getattr(scratchpad, "resume", None)
    get_null_resume = getattr(scratchpad, "get_null_resume", None)
    if not isinstance(resume, list) or not callable(get_null_resume):
        return None
    return InterruptState(
        step=int(getattr(scratchpad, "step", 0)),
        stop=int(getattr(scratchpad, "stop", 0)),
        resume=list(resume),
        null_resume=get_null_resume(False),  # a peek; the worker reports whether it took it
    )


def prepare(
    args: tuple[Any, ...], kwargs: dict[str, Any], dumps: Callable[[Any], bytes], node: str
) -> PreparedCall:
    """Capture the current LangGraph run (if any) for a call of ``node`` with ``args`` and
    ``kwargs``; ``dumps`` pickles the run's runtime values.

    Must run where LangGraph called the node (its run context is a context variable).
    """
    config = _current_config(kwargs)
    conf = config.get(CONF, {}) if config is not None else {}
    kwargs = dict(kwargs)
    writer: Callable[[Any], None] | None = None
    runtime: Any = kwargs.get("runtime")
    if _is_runtime(runtime):
        kwargs["runtime"] = Injected("runtime")
    else:
        runtime = conf.get(KEY_RUNTIME)
    if callable(kwargs.get("writer")):
        writer = kwargs["writer"]
        kwargs["writer"] = Injected("writer")
    elif _is_runtime(runtime):
        writer = runtime.stream_writer
    if isinstance(kwargs.get("config"), dict):
        kwargs["config"] = trim_config(kwargs["config"])
    injected = any(isinstance(v, Injected) for v in kwargs.values())
    if config is None and not injected:
        return PreparedCall(tuple(args), kwargs, LocalRun())
    scratchpad = conf.get(KEY_SCRATCHPAD)
    send = conf.get(KEY_SEND)
    kwargs[CALL_KEY] = CallContext(
        config=trim_config(config) if config is not None else {},
        interrupts=_interrupt_state(scratchpad) if scratchpad is not None else None,
        runtime=_pickled_runtime(runtime, dumps, node) if _is_runtime(runtime) else None,
    )
    return PreparedCall(
        tuple(args), kwargs, LocalRun(scratchpad, send if callable(send) else None, writer)
    )


def _picklable(value: Any) -> bool:
    try:
        cloudpickle.dumps(value)
    except Exception:  # noqa: BLE001 - whatever pickling raises, the answer is "no"
        return False
    return True


def _keep_picklable(values: dict[str, Any], what: str, node: str) -> dict[str, Any]:
    kept = {k: v for k, v in values.items() if _picklable(v)}
    dropped = sorted(set(values) - set(kept))
    if dropped:
        log.warning(
            "node %s: %s %s cannot be pickled and are not sent to the worker", node, what, dropped
        )
    return kept


def without_unpicklable_context(call: PreparedCall, node: str) -> PreparedCall | None:
    """The call with the run config's unpicklable parts left out (an object in
    ``configurable``), or None if there is no config to trim."""
    context = call.kwargs.get(CALL_KEY)
    kwargs = dict(call.kwargs)
    changed = False
    if isinstance(context, CallContext):
        config = dict(context.config)
        if CONF in config:
            config[CONF] = _keep_picklable(config[CONF], "configurable keys", node)
        config = _keep_picklable(config, "config keys", node)
        kwargs[CALL_KEY] = dataclasses.replace(context, config=config)
        changed = True
    given = kwargs.get("config")
    if isinstance(given, dict):
        kwargs["config"] = _keep_picklable(given, "config keys", node)
        changed = True
    return dataclasses.replace(call, kwargs=kwargs) if changed else None


def unwrap(value: Any, local: LocalRun) -> Any:
    """Replay the effects of an envelope into the run; return the node's value.

    Raises the node's ``GraphInterrupt`` (after its effects), so LangGraph pauses the run.
    """
    if not (type(value) is dict and len(value) == 1 and ENVELOPE_KEY in value):
        return value
    body: dict[str, Any] = value[ENVELOPE_KEY]
    if local.writer is not None:
        for chunk in body.get("stream", ()):
            local.writer(chunk)
    scratchpad = local.scratchpad
    if scratchpad is not None:
        if body.get("null_resume_used"):
            scratchpad.get_null_resume(True)
        resume = body.get("resume")
        if isinstance(resume, list) and isinstance(scratchpad.resume, list):
            scratchpad.resume[:] = resume
    if local.send is not None:
        for writes in body.get("sends", ()):
            local.send(writes)
    interrupt = body.get("interrupt")
    if isinstance(interrupt, BaseException):
        raise interrupt
    return body.get("value")
