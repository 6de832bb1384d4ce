"""What crosses the sandbox boundary, and in which form.

Inbound (server -> child) the submission is cloudpickled: it is the server's own data and is
unpickled only inside the confined task process. Outbound (task -> supervisor -> server)
everything is JSON, never a pickle: unpickling is running code, and a task's result must not
run code in the supervisor or the server, which are outside the sandbox. A result value JSON
cannot hold travels as a :class:`SealedValue`: still pickled, opened only where the task's own
code may run (a downstream sandboxed task, a client).
"""

from __future__ import annotations

import base64
import json
import os
import struct
from dataclasses import dataclass, replace
from typing import Any

from lattice.context import TaskDirectives
from lattice.exceptions import TaskErrorInfo
from lattice.executor.base import TaskOutcome, TaskSubmission
from lattice.serialization import PICKLE_KEY, SealedValue, decode_value, encode_value

_FRAME = struct.Struct(">cQ")


def unseal(value: Any) -> Any:
    """``value`` with every :class:`SealedValue` inside dicts, lists and tuples opened."""
    if isinstance(value, SealedValue):
        return value.open()
    if type(value) is dict:
        return {k: unseal(v) for k, v in value.items()}
    if type(value) is list:
        return [unseal(v) for v in value]
    if type(value) is tuple:
        return tuple(unseal(v) for v in value)
    return value


def unseal_submission(sub: TaskSubmission) -> TaskSubmission:
    """Open the sealed upstream values of ``sub`` (inside the sandbox, before running it)."""
    if sub.upstream_inputs is None:
        return sub
    return replace(sub, upstream_inputs=unseal(sub.upstream_inputs))


# --- task -> supervisor -> server: the outcome as JSON -------------------------------------


def encode_outcome(outcome: TaskOutcome) -> bytes:
    """JSON bytes of ``outcome``. A value that cannot be pickled at all becomes the task's
    error, as it would when a result has to leave any worker."""
    error = outcome.error.to_dict() if outcome.error is not None else None
    value: Any = None
    if error is None:
        try:
            value = encode_value(outcome.value)
        except Exception as exc:  # noqa: BLE001 - any pickling failure is the task's result's fault
            error = TaskErrorInfo(
                type=type(exc).__name__,
                message=f"the task's result could not be serialized: {exc}",
                traceback="",
            ).to_dict()
    doc: dict[str, Any] = {"value": value, "error": error, "duration": float(outcome.duration)}
    if error is None and outcome.directives is not None:
        doc["directives"] = outcome.directives.to_dict()
    return json.dumps(doc, separators=(",", ":")).encode()


def _seal(value: Any) -> Any:
    t = type(value)
    if t is list:
        return [_seal(v) for v in value]
    if t is dict:
        if len(value) == 1 and PICKLE_KEY in value:
            if not isinstance(value[PICKLE_KEY], str):
                raise ValueError("a pickled result value is not text")
            return SealedValue(base64.b64decode(value[PICKLE_KEY], validate=True))
        return {k: _seal(v) for k, v in value.items()}
    return value


def decode_outcome(data: bytes, *, open_values: bool) -> TaskOutcome:
    """Inverse of :func:`encode_outcome`, for bytes that came from an untrusted process.

    ``open_values`` unpickles non-JSON values (only where the task's code could run anyway);
    otherwise they stay :class:`SealedValue`. Raises ValueError for anything malformed.
    """
    try:
        return _decode_outcome(json.loads(data), open_values)
    except RecursionError:
        raise ValueError("the outcome is nested too deeply") from None


def _decode_outcome(doc: Any, open_values: bool) -> TaskOutcome:
    if not isinstance(doc, dict):
        raise ValueError("outcome is not a JSON object")
    duration = doc.get("duration", 0.0)
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        raise ValueError("outcome duration is not a number")
    error = doc.get("error")
    if error is not None:
        if not isinstance(error, dict) or not all(
            isinstance(error.get(k), str) for k in ("type", "message", "traceback")
        ):
            raise ValueError("outcome error is malformed")
        pickled = error.get("pickled")
        if pickled is not None and not isinstance(pickled, str):
            raise ValueError("outcome error is malformed")
        return TaskOutcome(error=TaskErrorInfo.from_dict(error), duration=float(duration))
    raw = doc.get("value")
    directives = doc.get("directives")
    parsed = TaskDirectives.from_dict(directives) if directives is not None else None
    if not open_values:
        return TaskOutcome(value=_seal(raw), duration=float(duration), directives=parsed)
    try:
        value = decode_value(raw)
    except Exception as exc:  # unpickling can fail in any way; it is reported as data
        raise ValueError(f"a result value could not be unpickled: {exc!r}") from exc
    return TaskOutcome(value=value, duration=float(duration), directives=parsed)


# --- framing: every byte stream here is a sequence of tagged, length-prefixed frames ----------

#: server -> supervisor: the request (header JSON line, then the pickled submission)
REQUEST = b"Q"
#: task -> supervisor: the outcome JSON
OUTCOME = b"O"
#: supervisor -> server: the report (:func:`encode_report`)
REPORT = b"R"
#: fork server -> server: how the supervisor process itself ended
STATUS = b"S"


def frame(tag: bytes, data: bytes) -> bytes:
    return _FRAME.pack(tag, len(data)) + data


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FrameParser:
    """Splits a byte stream fed in chunks into ``(tag, data)`` frames."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames: list[tuple[bytes, bytes]] = []

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        while len(self._buf) >= _FRAME.size:
            tag, size = _FRAME.unpack_from(self._buf)
            if len(self._buf) < _FRAME.size + size:
                return
            self.frames.append((tag, bytes(self._buf[_FRAME.size : _FRAME.size + size])))
            del self._buf[: _FRAME.size + size]

    def first(self, tag: bytes) -> bytes | None:
        return next((data for t, data in self.frames if t == tag), None)

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame (a writer that died mid-frame)."""
        return len(self._buf)


# --- supervisor -> server: how the task process ended ---------------------------------------


@dataclass(frozen=True)
class ChildEnd:
    """Facts the supervisor observed about the task process (not the task's own claims)."""

    exit_code: int | None = None
    signal: int | None = None
    cpu_seconds: float = 0.0
    max_rss_kb: int = 0
    #: the last few KB the task wrote to stdout/stderr
    output_tail: str = ""
    #: a fork or thread creation was refused by the pids cgroup
    process_limit_hit: bool = False
    #: the supervisor could not start or watch the task; nothing of the task ran
    supervisor_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, doc: Any) -> ChildEnd:
        if not isinstance(doc, dict):
            raise ValueError("child end is not an object")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})


def encode_report(end: ChildEnd, outcome: bytes | None) -> bytes:
    """The supervisor's last word: one JSON line, then the task's outcome bytes verbatim."""
    head = {"end": end.to_json(), "outcome_size": None if outcome is None else len(outcome)}
    return json.dumps(head).encode() + b"\n" + (outcome or b"")


def decode_report(data: bytes) -> tuple[ChildEnd, bytes | None]:
    """Inverse of :func:`encode_report`. Raises ValueError if ``data`` is not a whole report."""
    head, sep, rest = data.partition(b"\n")
    if not sep:
        raise ValueError("the report has no header")
    doc = json.loads(head)
    if not isinstance(doc, dict):
        raise ValueError("report is not a JSON object")
    end = ChildEnd.from_json(doc.get("end"))
    size = doc.get("outcome_size")
    if size is None:
        return end, None
    if not isinstance(size, int) or len(rest) != size:
        raise ValueError("the task's outcome was cut short")
    return end, rest
