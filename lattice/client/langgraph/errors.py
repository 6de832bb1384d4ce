"""Raising a node's remote failure in the graph's process, as the node itself would have.

LangGraph decides retries by exception type (``RetryPolicy.retry_on``, and by default no
retry for ValueError, TypeError, ...), so the original exception is raised again when it
could be pickled. The remote traceback rides along as its ``__cause__``, a
:class:`TaskFailedError` carrying the :class:`TaskErrorInfo`, the way
``concurrent.futures.ProcessPoolExecutor`` attaches a worker's traceback.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from lattice.exceptions import TaskErrorInfo, TaskFailedError
from lattice.serialization import loads_b64

log = logging.getLogger(__name__)


def _original(pickled: str | None) -> BaseException | None:
    if not pickled:
        return None
    try:
        exc = loads_b64(pickled)
    except Exception as err:  # noqa: BLE001 - unpickling runs arbitrary __setstate__ code
        # The exception cannot be rebuilt here: the caller raises the text form instead.
        log.debug("cannot unpickle a remote exception: %s", err)
        return None
    return exc if isinstance(exc, BaseException) else None


def raise_node_error(node: str, error: dict[str, Any] | Any) -> NoReturn:
    """Raise the failure of ``node`` that the server reported as ``error`` (spec/002: ``type``,
    ``message``, ``traceback``, and ``pickled`` when the exception could be pickled).

    Raises the original exception (its ``__cause__`` a TaskFailedError with the remote
    traceback) or, if it cannot be rebuilt here, the TaskFailedError itself.
    """
    info = TaskErrorInfo.from_dict(error if isinstance(error, dict) else {"message": str(error)})
    failure = TaskFailedError(node, info)
    exc = _original(info.pickled)
    if exc is None:
        raise failure
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(f"(raised by LangGraph node {node!r} on Lattice; remote traceback above)")
    raise exc from failure
