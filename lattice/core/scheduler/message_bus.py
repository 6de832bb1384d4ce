"""Thread-safe message passing between the orchestrator and the scheduler thread.

To the scheduler: a queue it blocks on. From the scheduler: a queue, or, once the orchestrator
installs a listener, a direct hand-off (the orchestrator's listener schedules the message on
its event loop with ``call_soon_threadsafe``), so nobody polls for completions.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from lattice.core.scheduler.messages import Message

Listener = Callable[[Message], None]


class MessageBus:
    def __init__(self) -> None:
        self._to_scheduler: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._from_scheduler: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._ready_event = threading.Event()
        self._listener: Listener | None = None

    # --- orchestrator side ------------------------------------------------------------------

    def send_to_scheduler(self, message: Message) -> None:
        self._to_scheduler.put(message)

    def receive_from_scheduler(self, timeout: float | None = None) -> Message | None:
        try:
            return self._from_scheduler.get(timeout=timeout)
        except queue.Empty:
            return None

    def set_listener(self, listener: Listener | None) -> None:
        """Deliver scheduler messages to ``listener`` (from the scheduler thread) instead of
        queueing them; messages already queued are handed over first."""
        self._listener = listener
        if listener is not None:
            while True:
                try:
                    listener(self._from_scheduler.get_nowait())
                except queue.Empty:
                    break

    # --- scheduler side ---------------------------------------------------------------------

    def send_from_scheduler(self, message: Message) -> None:
        listener = self._listener
        if listener is not None:
            listener(message)
        else:
            self._from_scheduler.put(message)

    def receive_in_scheduler(self, timeout: float | None = None) -> Message | None:
        try:
            return self._to_scheduler.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain_in_scheduler(self) -> list[Message]:
        """Everything already waiting, without blocking."""
        out: list[Message] = []
        while True:
            try:
                out.append(self._to_scheduler.get_nowait())
            except queue.Empty:
                return out

    # --- startup ----------------------------------------------------------------------------

    def signal_ready(self) -> None:
        self._ready_event.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready_event.wait(timeout)
