"""What travels between the graph's process and the worker for one node call.

Both sides import this module, so it needs neither LangGraph nor LangChain.

Results: the worker encodes a node's result itself (JSON where possible, pickled leaves
elsewhere), with the same cloudpickle that loaded the node. A class the client shipped by
value (a dataclass from the user's module) then comes back as the very class the client has:
cloudpickle recognises its own by-value classes by a tracker id, which Ray's vendored
cloudpickle, re-pickling the value between worker and server, would replace. The encoded
form is plain JSON to the server, which passes it through unchanged.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import cloudpickle

from lattice.serialization import PICKLE_KEY, loads_b64

#: reserved keyword under which the graph's process sends the :class:`CallContext`
CALL_KEY = "__lattice_call__"
#: the single key of a result envelope: the value and what the node did to its run
ENVELOPE_KEY = "__lattice_langgraph__"
#: the single key of a leaf the worker pickled
WORKER_PICKLE_KEY = "__lattice_worker_pickle__"

# LangGraph's configurable keys (langgraph._internal._constants), spelled out because the
# worker side must not import LangGraph to learn them.
CONF = "configurable"
KEY_SCRATCHPAD = "__pregel_scratchpad"
KEY_SEND = "__pregel_send"
KEY_RUNTIME = "__pregel_runtime"
INTERNAL_PREFIX = "__pregel_"


@dataclass(frozen=True)
class Injected:
    """Stands in a keyword argument LangGraph injects that cannot travel (``writer``,
    ``runtime``); the worker puts its counterpart in its place."""

    name: str


@dataclass(frozen=True)
class InterruptState:
    """What ``interrupt()`` reads from the node's scratchpad in the graph's process."""

    step: int
    stop: int
    #: resume values already given to this node's interrupts, in order
    resume: list[Any]
    #: a pending ``Command(resume=...)`` value not yet taken by any interrupt (None: none)
    null_resume: Any


@dataclass(frozen=True)
class CallContext:
    """The part of a LangGraph run a node can read, in a form that pickles."""

    #: the node's RunnableConfig without callbacks and LangGraph's internal keys
    config: dict[str, Any]
    interrupts: InterruptState | None = None
    #: the picklable fields of the run's ``Runtime`` (context, previous, execution_info,
    #: ...) as a cloudpickled dict, loaded in the worker only if the node reads the runtime
    runtime: bytes | None = None


def _json_native(value: Any) -> bool:
    # Exact types: a subclass of str or int (an Enum, a LangChain object) would lose its type.
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return True
    return t is float and math.isfinite(value)


def encode_result(value: Any) -> Any:
    """JSON-able form of ``value``; non-JSON leaves are pickled under WORKER_PICKLE_KEY."""
    if _json_native(value):
        return value
    t = type(value)
    if t is list:
        return [encode_result(v) for v in value]
    if (
        t is dict
        and all(type(k) is str for k in value)
        and not ({WORKER_PICKLE_KEY, PICKLE_KEY} & value.keys())
    ):
        return {k: encode_result(v) for k, v in value.items()}
    return {WORKER_PICKLE_KEY: base64.b64encode(cloudpickle.dumps(value)).decode("ascii")}


def decode_result(value: Any) -> Any:
    """Inverse of :func:`encode_result`; also loads the server's own pickled leaves."""
    t = type(value)
    if t is list:
        return [decode_result(v) for v in value]
    if t is dict:
        if len(value) == 1:
            if WORKER_PICKLE_KEY in value:
                return loads_b64(value[WORKER_PICKLE_KEY])
            if PICKLE_KEY in value:
                return loads_b64(value[PICKLE_KEY])
        return {k: decode_result(v) for k, v in value.items()}
    return value
