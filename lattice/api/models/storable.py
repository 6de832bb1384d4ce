"""What a request body may hold so that the head can store it and encode it again.

JSON lets a client send values Python parses but cannot write back: a lone UTF-16 surrogate
(``"\\ud800"``) becomes a ``str`` that UTF-8 refuses to encode, ``1e400`` becomes ``inf``.
Stored in a task, either one breaks every later answer that shows it, so bodies are checked
once, at the edge, before anything is changed.
"""

from __future__ import annotations

import math
from typing import Any

from lattice.exceptions import LatticeInputError

#: deeper JSON than this is refused: no task input needs it, and walking it costs stack
MAX_DEPTH = 64


class UnstorableInputError(LatticeInputError):
    """A body holds a value the head could not store and encode again."""


def printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode written as a backslash escape: safe to put
    into an answer or a log line whatever a client sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{printable(p)}" for p in path)[1:] or (
        "body"
    )


def check_storable(value: Any) -> None:
    """Raise :class:`UnstorableInputError` naming the field when ``value`` (a parsed JSON body)
    holds a string UTF-8 cannot encode, a number that is not finite, or nests deeper than
    :data:`MAX_DEPTH`. Iterative, so a deep body cannot exhaust the stack here."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise UnstorableInputError(f"{_where(path[:2])}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            if not _encodable(item):
                raise UnstorableInputError(
                    f"{_where(path)}: a string with a lone surrogate cannot be stored"
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnstorableInputError(f"{_where(path)}: numbers must be finite")
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _encodable(key):
                    raise UnstorableInputError(
                        f"{_where(path)}: a key with a lone surrogate cannot be stored"
                    )
                stack.append((child, (*path, key)))
        elif isinstance(item, list):
            stack.extend((child, (*path, i)) for i, child in enumerate(item))
