"""LoopHandoff: scheduler messages reach the event loop in order, a burst per wake-up."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lattice.core.orchestrator.handoff import LoopHandoff

WAIT = 10.0


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def count_wake_ups(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Make ``loop.call_soon_threadsafe`` count its calls into the returned one-item list."""
    calls = [0]
    original = loop.call_soon_threadsafe

    def counting(callback: Callable[..., Any], *args: Any) -> Any:
        calls[0] += 1
        return original(callback, *args)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
    return calls


class Collector:
    """A handler that keeps what it is given; :meth:`wait_for` runs the loop until it holds
    a given number of items (the handler itself wakes the wait)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fail_on: int | None = None) -> None:
        self.loop = loop
        self.items: list[int] = []
        self.fail_on = fail_on
        self._want = 0
        self._enough: asyncio.Future[None] | None = None

    def __call__(self, item: int) -> None:
        if item == self.fail_on:
            self._check()
            raise ValueError("bad item")
        self.items.append(item)
        self._check()

    def _check(self) -> None:
        if self._enough is not None and not self._enough.done() and self._seen() >= self._want:
            self._enough.set_result(None)

    def _seen(self) -> int:
        return len(self.items) + (1 if self.fail_on is not None else 0)

    def wait_for(self, count: int) -> None:
        self._want, self._enough = count, self.loop.create_future()
        self._check()
        self.loop.run_until_complete(asyncio.wait_for(self._enough, WAIT))


def put_from_thread(handoff: LoopHandoff[int], items: range) -> None:
    def put_all() -> None:
        for i in items:
            handoff.put(i)

    thread = threading.Thread(target=put_all)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()


def test_a_burst_from_another_thread_arrives_in_order_with_one_wake_up(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wake_ups = count_wake_ups(loop)
    got = Collector(loop)
    handoff = LoopHandoff(loop, got)

    put_from_thread(handoff, range(100))
    got.wait_for(100)

    assert got.items == list(range(100))
    assert wake_ups[0] == 1


def test_items_after_a_delivery_wake_the_loop_again(loop: asyncio.AbstractEventLoop) -> None:
    wake_ups = count_wake_ups(loop)
    got = Collector(loop)
    handoff = LoopHandoff(loop, got)

    put_from_thread(handoff, range(3))
    got.wait_for(3)
    put_from_thread(handoff, range(3, 5))
    got.wait_for(5)

    assert got.items == [0, 1, 2, 3, 4]
    assert wake_ups[0] == 2


def test_a_failing_item_does_not_stop_the_others(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    got = Collector(loop, fail_on=1)
    handoff = LoopHandoff(loop, got)

    put_from_thread(handoff, range(3))
    got.wait_for(3)
    put_from_thread(handoff, range(3, 4))
    got.wait_for(4)

    assert got.items == [0, 2, 3]
    assert "bad item" in caplog.text
