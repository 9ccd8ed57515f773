"""The pieces of a connection that need no socket: the app queue and the read deadline."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from bridge_actors._server.connection import AppQueue, ReadDeadline, ReadPhase


def message(n: int) -> dict:
    return {"type": "websocket.receive", "text": str(n)}


DISCONNECT = {"type": "websocket.disconnect", "code": 1006}


async def test_the_queue_hands_events_over_in_order_and_slows_a_fast_sender():
    queue = AppQueue(2)
    await queue.put(message(1))
    await queue.put(message(2))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.put, message(3))
        await trio.testing.wait_all_tasks_blocked()
        assert queue.statistics().waiting_to_put == 1  # full: the sender waits
        assert await queue.receive() == message(1)
    assert [await queue.receive() for _ in range(2)] == [message(2), message(3)]


async def test_a_disconnect_never_waits_and_overtakes_what_is_queued():
    queue = AppQueue(2)
    await queue.put(message(1))
    await queue.put(message(2))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.put, message(3))  # blocked behind the full queue
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(1):
            await queue.put(DISCONNECT)  # full, yet it goes straight in
    assert await queue.receive() == DISCONNECT
    assert await queue.receive() == DISCONNECT  # and stays the answer
    stats = queue.statistics()
    assert stats.disconnected and stats.queued == 0 and stats.dropped == 3


async def test_after_the_app_returned_nothing_waits_on_it():
    queue = AppQueue(1)
    await queue.put(message(1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.put, message(2))
        await trio.testing.wait_all_tasks_blocked()
        queue.finish()
    await queue.put(message(3))
    assert queue.statistics() == queue.statistics().__class__(
        queued=0, max_size=1, disconnected=False, finished=True, waiting_to_put=0, dropped=3
    )


async def test_a_receiver_waits_for_the_next_event():
    queue = AppQueue(4)
    async with trio.open_nursery() as nursery:
        received = []

        async def receive() -> None:
            received.append(await queue.receive())

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        assert received == []
        await queue.put(message(1))
    assert received == [message(1)]


def test_the_header_deadline_runs_from_the_first_byte_of_the_head():
    deadline = ReadDeadline(header_timeout=10, body_timeout=3)
    assert deadline.deadline() == math.inf  # idle: the keep-alive timer's business
    deadline.observe(ReadPhase.HEADERS, now=100)
    deadline.observe(ReadPhase.HEADERS, now=105)  # more bytes of the same head
    assert deadline.deadline() == 110
    assert deadline.timeout_detail() == "request headers not received within 10 s"


def test_the_body_deadline_runs_from_the_last_part_received():
    deadline = ReadDeadline(header_timeout=10, body_timeout=3)
    deadline.observe(ReadPhase.HEADERS, now=100)
    deadline.observe(ReadPhase.BODY, now=101)
    deadline.observe(ReadPhase.BODY, now=150)
    assert deadline.deadline() == 153
    assert deadline.timeout_detail() == "request body stalled for 3 s"


@pytest.mark.parametrize("phase", [ReadPhase.IDLE, ReadPhase.BUSY, ReadPhase.STREAM])
def test_no_read_deadline_while_idle_answering_or_streaming(phase):
    deadline = ReadDeadline(header_timeout=10, body_timeout=3)
    deadline.observe(ReadPhase.HEADERS, now=100)
    deadline.observe(phase, now=101)
    assert deadline.deadline() == math.inf


def test_the_next_request_gets_a_fresh_header_deadline():
    deadline = ReadDeadline(header_timeout=10, body_timeout=3)
    deadline.observe(ReadPhase.HEADERS, now=100)
    deadline.observe(ReadPhase.BUSY, now=101)
    deadline.observe(ReadPhase.IDLE, now=102)
    deadline.observe(ReadPhase.HEADERS, now=200)
    assert deadline.deadline() == 210
