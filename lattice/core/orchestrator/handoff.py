"""Handing the scheduler's messages to the orchestrator's event loop, a burst at a time."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class LoopHandoff(Generic[T]):
    """Delivers items put from any thread to ``handler`` on ``loop``, in order.

    The first item of a burst wakes the loop (``call_soon_threadsafe``, one write to its
    self-pipe); items put before that delivery runs join it. A fan-out whose hundred tasks
    finish together then costs the loop one wake-up, not a hundred, and a lone item is
    delivered as soon as before.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, handler: Callable[[T], None]) -> None:
        self._loop = loop
        self._handler = handler
        self._lock = threading.Lock()
        self._items: deque[T] = deque()
        self._scheduled = False

    def put(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    self._scheduled = False
                    return
                batch = list(self._items)
                self._items.clear()
            for item in batch:
                try:
                    self._handler(item)
                except Exception:
                    # One bad message must not stop the delivery of the others (the loop
                    # would have logged it the same way had it been delivered on its own).
                    log.exception("handling %r failed", item)
