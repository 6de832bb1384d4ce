"""Which Ray nodes are alive, told by the cluster as it changes.

Ray's public API has no notification for nodes joining or dying. Its GCS publishes every change
of a node's state on a node-info channel, which Ray's own dashboard follows with a long-poll
subscriber (``ray._private.gcs_pubsub.GcsAioNodeInfoSubscriber``): the request waits in the GCS
until there is news. :class:`NodeWatcher` follows that channel on a thread of its own and, on
every message, rereads ``ray.nodes()`` and reports the alive set if it changed. Nothing is
checked on a timer: a node declared dead is reported as soon as the GCS says so.

If the GCS cannot be reached, the watcher waits ``retry_after`` seconds (or until it is
stopped) and subscribes again, rereading the nodes first so that nothing that changed in
between is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc
import ray

log = logging.getLogger(__name__)

#: how many node messages one wake-up takes at most (the rest come with the next)
_BATCH = 1000


def alive_ids(nodes: list[dict[str, Any]]) -> frozenset[str]:
    return frozenset(str(n["NodeID"]) for n in nodes if n.get("Alive"))


class NodeWatcher:
    """Calls ``on_change(alive_ids)`` from its own thread whenever Ray's set of alive nodes
    differs from the last one it reported (``alive`` at the start)."""

    def __init__(
        self,
        gcs_address: str,
        alive: frozenset[str],
        on_change: Callable[[frozenset[str]], None],
        retry_after: float = 1.0,
    ) -> None:
        self._gcs_address = gcs_address
        self._alive = alive
        self._on_change = on_change
        self._retry_after = retry_after
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lattice-ray-nodes", daemon=True)
        self._thread.start()
        self._started.wait()

    def stop(self, timeout: float = 10.0) -> None:
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is not None and stopping is not None:
            # RuntimeError: its loop has already ended, nothing is left to stop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        asyncio.run(self._follow())

    async def _follow(self) -> None:
        from ray._private.gcs_pubsub import GcsAioNodeInfoSubscriber

        self._loop = asyncio.get_running_loop()
        self._stopping = stopping = asyncio.Event()
        self._started.set()
        while not stopping.is_set():
            subscriber = GcsAioNodeInfoSubscriber(address=self._gcs_address)
            try:
                await subscriber.subscribe()
                # Anything that changed before the subscription took effect is in this read.
                self._recheck()
                while not stopping.is_set():
                    news = asyncio.ensure_future(subscriber.poll(batch_size=_BATCH))
                    stop = asyncio.ensure_future(stopping.wait())
                    await asyncio.wait([news, stop], return_when=asyncio.FIRST_COMPLETED)
                    stop.cancel()
                    if stopping.is_set():
                        news.cancel()
                        break
                    if not news.result():
                        # The poll ended without news: the GCS went away. Subscribe again.
                        raise ConnectionError("the GCS ended the node-info subscription")
                    self._recheck()
            except (grpc.RpcError, ConnectionError, OSError) as exc:  # GCS unreachable
                log.warning(
                    "cannot follow Ray's node changes (%s); trying again in %gs",
                    exc,
                    self._retry_after,
                )
                # Wait for the retry, or for stop(): not a poll of the nodes.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self._retry_after)
            finally:
                await subscriber.close()

    def _recheck(self) -> None:
        try:
            now = alive_ids(ray.nodes())
        except Exception:  # GCS unreachable right now: the next message or retry rereads
            log.warning("cannot list Ray nodes", exc_info=True)
            return
        if now == self._alive:
            return
        log.info("Ray nodes changed: +%s -%s", sorted(now - self._alive), sorted(self._alive - now))
        self._alive = now
        try:
            self._on_change(now)
        except Exception:  # the listener's bug must not stop the watching
            log.exception("nodes-changed listener failed")
