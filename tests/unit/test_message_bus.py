"""MessageBus: typed messages to and from the scheduler thread, queued or handed off."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from lattice.core.scheduler.message_bus import MessageBus
from lattice.core.scheduler.messages import (
    Message,
    MessageType,
    NoData,
    RunControlData,
    StopWorkerData,
)


def stop(run_id: str) -> Message:
    return Message(MessageType.STOP_WORKFLOW, RunControlData(run_id))


def test_messages_are_frozen_typed_values() -> None:
    msg = stop("r1")

    assert msg.message_type is MessageType.STOP_WORKFLOW
    assert msg.data == RunControlData("r1")
    assert Message(MessageType.SHUTDOWN).data == NoData()
    assert MessageType("finish_task") is MessageType.FINISH_TASK
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.data.run_id = "r2"  # type: ignore[misc]


def test_to_the_scheduler_in_order() -> None:
    bus = MessageBus()
    for i in range(3):
        bus.send_to_scheduler(stop(f"r{i}"))

    first = bus.receive_in_scheduler(timeout=0)

    assert first == stop("r0")
    assert bus.drain_in_scheduler() == [stop("r1"), stop("r2")]
    assert bus.drain_in_scheduler() == []
    assert bus.receive_in_scheduler(timeout=0) is None


def test_receive_in_scheduler_blocks_until_a_message_arrives() -> None:
    bus = MessageBus()
    got: list[Message | None] = []
    thread = threading.Thread(target=lambda: got.append(bus.receive_in_scheduler()))
    thread.start()

    bus.send_to_scheduler(Message(MessageType.STOP_WORKER, StopWorkerData("n1")))
    thread.join(5)

    assert not thread.is_alive()
    assert got == [Message(MessageType.STOP_WORKER, StopWorkerData("n1"))]


def test_from_the_scheduler_queued_until_a_listener_takes_over() -> None:
    bus = MessageBus()
    bus.send_from_scheduler(stop("queued-1"))
    bus.send_from_scheduler(stop("queued-2"))
    heard: list[Message] = []

    bus.set_listener(heard.append)  # queued messages are handed over first, in order
    bus.send_from_scheduler(stop("live"))

    assert heard == [stop("queued-1"), stop("queued-2"), stop("live")]
    assert bus.receive_from_scheduler(timeout=0) is None

    bus.set_listener(None)
    bus.send_from_scheduler(stop("after"))
    assert heard[-1] == stop("live")
    assert bus.receive_from_scheduler(timeout=0) == stop("after")


def test_ready_signal() -> None:
    bus = MessageBus()

    assert not bus.wait_ready(timeout=0)
    bus.signal_ready()
    assert bus.wait_ready(timeout=0)
