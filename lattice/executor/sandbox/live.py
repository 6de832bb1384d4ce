"""The table entry of one running sandboxed task: what ``cancel`` needs, nothing else."""

from __future__ import annotations

import threading
from collections.abc import Callable


class LiveChild:
    """A child that may be cancelled from another thread.

    The child's owner calls :meth:`arm` once the child exists and :meth:`finish` before it
    releases the child's process (or container) id, so ``cancel`` never kills a stranger that
    reused it. A cancel that arrives before :meth:`arm` kills the child as soon as it is armed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kill: Callable[[], None] | None = None
        self.cancelled = False
        self.finished = False

    def arm(self, kill: Callable[[], None]) -> None:
        with self._lock:
            self._kill = kill
            if self.cancelled:
                kill()

    def cancel(self) -> bool:
        with self._lock:
            if self.finished:
                return False
            self.cancelled = True
            if self._kill is not None:
                self._kill()
            return True

    def finish(self) -> None:
        with self._lock:
            self.finished = True
