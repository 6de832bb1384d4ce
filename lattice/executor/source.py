"""Tasks sent as source alone (spec/002 makes ``code_str`` and ``code_ser`` both optional, and
a client not written in Python can only send source).

The head never compiles or runs the source: it only parses it (:func:`find_function`, which
executes nothing) to refuse a source without a usable function at once, then stores a pickle
that, unpickled where the task runs, compiles the source there and returns the function
(:func:`source_payload`). So the task's process, sandbox included, is the only place the code
exists as code, as for pickled functions.
"""

from __future__ import annotations

import ast
import pickle
from collections.abc import Callable
from typing import Any

from lattice.exceptions import InvalidCodeError


def find_function(source: str, task_name: str | None, field: str = "code_str") -> str:
    """The name of the function ``source`` defines for the task: the one named ``task_name``,
    else the only one it defines at top level.

    Raises:
        InvalidCodeError: naming ``field``, if the source does not parse, defines no function,
            or several of which none is named ``task_name``.
    """
    try:
        tree = ast.parse(source, filename=f"<{field}>")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise InvalidCodeError(f"{field} is not valid Python source: {exc}") from None
    names = [
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    if task_name and task_name in names:
        return task_name
    if len(names) == 1:
        return names[0]
    if not names:
        raise InvalidCodeError(f"{field} defines no function at top level to run as the task")
    raise InvalidCodeError(
        f"{field} defines several functions ({', '.join(names)}) and none is named after the "
        f"task ({task_name!r}); name the task after the one to run"
    )


def compile_function(source: str, name: str) -> Callable[..., Any]:
    """Compile ``source`` in a fresh namespace and return its function ``name``. Runs the
    source's top level: call it only where the task runs."""
    namespace: dict[str, Any] = {"__name__": "__lattice_task__"}
    exec(compile(source, f"<task {name}>", "exec"), namespace)
    function: Callable[..., Any] = namespace[name]
    return function


class _CompiledWhereLoaded:
    """Pickles as a call of :func:`compile_function`: loading the pickle compiles the source."""

    def __init__(self, source: str, name: str) -> None:
        self.source = source
        self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return (compile_function, (self.source, self.name))


def source_payload(source: str, name: str) -> bytes:
    """Task code, in the same pickled form as a client's ``code_ser``, that compiles
    ``source`` and yields its function ``name`` where it is loaded (nothing runs here)."""
    return pickle.dumps(_CompiledWhereLoaded(source, name), protocol=pickle.HIGHEST_PROTOCOL)
