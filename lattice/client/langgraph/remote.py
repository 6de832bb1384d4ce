"""What runs in the worker: a decorated node's function, inside a stand-in for LangGraph's
run context.

A LangGraph node reads its run from context: ``interrupt()``, ``get_config()``,
``get_stream_writer()`` and ``get_runtime()`` all look in LangChain's config context variable.
The graph's process captures what is needed of it (:class:`CallContext`), and
:class:`NodeShim` rebuilds a small copy around the node here. What the node does to that
copy (stream chunks written, interrupt resume values taken, an interrupt raised) comes back
beside the return value in an envelope, and the graph's process replays it into the real run
(``bridge.py``).

LangGraph and LangChain are used here only when the node's own code has imported them
already, so a plain CPU node does not pay their imports (over a second) in a fresh worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import itertools
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import cloudpickle

from lattice.client.langgraph.wire import (
    CALL_KEY,
    CONF,
    ENVELOPE_KEY,
    KEY_RUNTIME,
    KEY_SCRATCHPAD,
    KEY_SEND,
    CallContext,
    Injected,
    InterruptState,
    encode_result,
)

_LC_CONFIG_MODULE = "langchain_core.runnables.config"


@dataclass
class _Effects:
    """What the node did to its run, to be replayed in the graph's process."""

    stream: list[Any] = field(default_factory=list)
    sends: list[list[Any]] = field(default_factory=list)
    null_resume_used: bool = False


class _Scratchpad:
    """Duck-typed ``PregelScratchpad``: the attributes ``interrupt()`` and nested graphs read."""

    def __init__(self, state: InterruptState, effects: _Effects) -> None:
        self.step = state.step
        self.stop = state.stop
        self.resume = list(state.resume)
        self.call_counter = itertools.count().__next__
        self.interrupt_counter = itertools.count().__next__
        self.subgraph_counter = itertools.count().__next__
        self._null_resume = state.null_resume
        self._effects = effects
        self._lock = threading.Lock()

    def get_null_resume(self, consume: bool = False) -> Any:
        with self._lock:
            value = self._null_resume
            if consume and value is not None:
                self._null_resume = None
                self._effects.null_resume_used = True
            return value


def _runtime(pickled: bytes | None, effects: _Effects) -> Any:
    """A LangGraph ``Runtime`` whose stream writer records into ``effects``; no store."""
    from langgraph.runtime import Runtime  # the node asked for one, so LangGraph is there

    fields: dict[str, Any] = cloudpickle.loads(pickled) if pickled else {}
    known = {f.name for f in dataclasses.fields(Runtime)} - {"store", "stream_writer"}
    given = {k: v for k, v in fields.items() if k in known}
    return Runtime(**given, store=None, stream_writer=effects.stream.append)


class _ContextVarSet:
    def __init__(self, var: Any, value: Any) -> None:
        self._var = var
        self._value = value
        self._token: Any = None

    def __enter__(self) -> None:
        self._token = self._var.set(self._value)

    def __exit__(self, *exc_info: object) -> None:
        self._var.reset(self._token)


def _graph_context(
    call: CallContext, effects: _Effects, runtime: Any
) -> tuple[AbstractContextManager[Any], dict[str, Any]]:
    """The stand-in run context (if LangChain is loaded here) and the config the node sees."""
    module: ModuleType | None = sys.modules.get(_LC_CONFIG_MODULE)
    if module is None and not {"langchain_core", "langgraph"} & sys.modules.keys():
        # Nothing the node or its state imported can read a run context: none is needed.
        return nullcontext(), call.config
    if module is None:
        module = importlib.import_module(_LC_CONFIG_MODULE)
    conf = dict(call.config.get(CONF, {}))
    if call.interrupts is not None:
        conf[KEY_SCRATCHPAD] = _Scratchpad(call.interrupts, effects)
        conf[KEY_SEND] = lambda writes: effects.sends.append(list(writes))
    if runtime is not None:
        conf[KEY_RUNTIME] = runtime
    config = {**call.config, CONF: conf}
    return _ContextVarSet(module.var_child_runnable_config, config), config


def _await_if_needed(result: Any) -> Any:
    if inspect.isawaitable(result):
        # The worker has no running loop; asyncio.run copies the current context (with the
        # run context installed) into the coroutine's task.
        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _envelope(
    value: Any,
    effects: _Effects | None = None,
    resume: list[Any] | None = None,
    interrupt: BaseException | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"value": value}
    if effects is not None:
        body["stream"] = effects.stream
        body["sends"] = effects.sends
        body["null_resume_used"] = effects.null_resume_used
    if resume is not None:
        body["resume"] = resume
    if interrupt is not None:
        body["interrupt"] = interrupt
    return {ENVELOPE_KEY: body}


def _is_envelope_shaped(value: Any) -> bool:
    return type(value) is dict and ENVELOPE_KEY in value


def _is_graph_interrupt(exc: BaseException) -> bool:
    errors = sys.modules.get("langgraph.errors")
    return errors is not None and isinstance(exc, errors.GraphInterrupt)


class NodeShim:
    """The function the server runs for a decorated node: ``shim(*args, **kwargs)``.

    Returns the node's value encoded by :func:`encode_result`, in an envelope when the node
    did something to its run. A ``GraphInterrupt`` is not a failure: it travels in the
    envelope. Any other exception propagates, so the runner reports its type and traceback.
    """

    def __init__(self, func: Callable[..., Any], name: str) -> None:
        self.func = func
        self.name = name

    def __repr__(self) -> str:
        return f"NodeShim({self.name})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call: CallContext | None = kwargs.pop(CALL_KEY, None)
        if call is None:
            value = _await_if_needed(self.func(*args, **kwargs))
            # A node's own dict that looks like an envelope is wrapped, so it reads back as is.
            return encode_result(_envelope(value) if _is_envelope_shaped(value) else value)
        return encode_result(self._call_in_context(call, args, kwargs))

    def _call_in_context(
        self, call: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        effects = _Effects()
        injected = {k for k, v in kwargs.items() if isinstance(v, Injected)}
        runtime = None
        # get_runtime() and get_stream_writer() live in langgraph.config and read the runtime
        readers = {"langgraph.config", "langgraph.runtime"} & sys.modules.keys()
        if call.runtime is not None and ("runtime" in injected or readers):
            runtime = _runtime(call.runtime, effects)
        context, config = _graph_context(call, effects, runtime)
        for key in injected:
            if kwargs[key].name == "writer":
                kwargs[key] = effects.stream.append
            elif kwargs[key].name == "runtime":
                kwargs[key] = runtime if runtime is not None else _runtime(None, effects)
        if isinstance(kwargs.get("config"), dict):
            kwargs["config"] = config
        scratchpad = config.get(CONF, {}).get(KEY_SCRATCHPAD)
        resume = scratchpad.resume if isinstance(scratchpad, _Scratchpad) else None
        try:
            with context:
                value = _await_if_needed(self.func(*args, **kwargs))
        except Exception as exc:
            if _is_graph_interrupt(exc):
                return _envelope(None, effects, resume, interrupt=exc)
            lazy_import = isinstance(context, nullcontext) and "runnable context" in str(exc)
            if lazy_import and hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(
                    "Lattice: the node imported LangGraph inside its body, after the worker "
                    "decided it needs no run context; import interrupt/get_config/... at the "
                    "top of the node's module"
                )
            raise
        untouched = not (effects.stream or effects.sends or effects.null_resume_used)
        if untouched and not _is_envelope_shaped(value):
            return value  # the common case stays plain on the wire
        return _envelope(value, effects, resume)
