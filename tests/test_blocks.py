"""pmx.worker.blocks: timing the steps of a request and marking its connection."""

from __future__ import annotations

import asyncio
import time

import pytest

from pmx.worker.blocks import BlockWatch, Stepped
from pmx.worker.hooks import RequestHooks

# The tests' threshold for a blocking step, not pmx's (3 ms): a loaded machine adds
# to any step the time its process waits for a CPU, up to the scheduler's period (6 to
# 24 ms), and a step meant not to block must stay below the threshold all the same.
BLOCK = 0.05


class Connection:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class Send:
    """Stands for a request's ``send``: bridge.connection_of finds its connection, None
    once that is closing."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    async def __call__(self, message: dict) -> None:
        pass


def connection_of(send: Send) -> Connection | None:
    return None if send.connection.closing else send.connection


def watch() -> tuple[BlockWatch, list[int]]:
    counts: list[int] = []
    blocks = BlockWatch(connection_of, lambda: counts.append(blocks.count), block=BLOCK)
    return blocks, counts


def request(blocks: BlockWatch, work, send: Send) -> None:
    """One HTTP request whose app runs ``work()``, through the worker's hooks."""

    async def app(scope, receive, send) -> None:
        await work()

    asyncio.run(RequestHooks(blocks).wrap(app)({"type": "http"}, None, send))


async def blocking(seconds: float) -> str:
    time.sleep(seconds)  # a synchronous call in async code
    return "done"


async def awaiting(seconds: float) -> str:
    for _ in range(4):
        await asyncio.sleep(seconds / 4)  # the loop is free meanwhile
    time.sleep(BLOCK / 10)
    return "done"


def test_stepped_keeps_the_longest_step_and_the_result():
    async def main() -> tuple[str, float, str, float]:
        slow = Stepped(blocking(BLOCK * 3))
        fast = Stepped(awaiting(BLOCK * 8))
        return await slow, slow.longest, await fast, fast.longest

    slow_result, slow_step, fast_result, fast_step = asyncio.run(main())
    assert (slow_result, fast_result) == ("done", "done")
    assert slow_step >= BLOCK * 3
    assert fast_step < BLOCK  # four sleeps of 2 BLOCK each, none of them a step


def test_stepped_passes_exceptions_and_cancellation_through():
    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    async def stepped_sleep() -> None:
        await Stepped(asyncio.sleep(10))

    async def main() -> None:
        with pytest.raises(ValueError, match="boom"):
            await Stepped(fails())
        task = asyncio.ensure_future(stepped_sleep())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_connection_is_marked_on_its_second_blocking_request_until_one_does_not():
    blocks, counts = watch()
    kept_alive = Send(Connection())
    request(blocks, lambda: blocking(BLOCK * 2), kept_alive)
    assert blocks.count == 0 and blocks.suspects == {kept_alive.connection}  # slow: why?
    request(blocks, lambda: blocking(BLOCK * 2), kept_alive)  # timed step by step
    assert blocks.count == 1
    request(blocks, lambda: blocking(BLOCK * 2), kept_alive)
    assert blocks.count == 1
    request(blocks, lambda: awaiting(BLOCK * 4), kept_alive)  # slow, but the loop was free
    assert blocks.count == 0 and blocks.suspects == {kept_alive.connection}
    assert counts == [1, 0]  # told of each change, once


def test_a_long_poll_is_never_marked():
    blocks, counts = watch()
    poll = Send(Connection())
    for _ in range(3):
        request(blocks, lambda: awaiting(BLOCK * 4), poll)
    assert blocks.count == 0 and counts == []


def test_fast_requests_leave_no_trace():
    blocks, _ = watch()
    fast = Send(Connection())
    for _ in range(3):
        request(blocks, lambda: awaiting(0), fast)
    assert not blocks.suspects and not blocks.marked


def test_a_connection_that_closes_takes_its_mark_with_it():
    blocks, counts = watch()
    connection = Connection()
    for _ in range(2):
        request(blocks, lambda: blocking(BLOCK * 2), Send(connection))
    assert blocks.count == 1
    blocks.forget(Connection())  # some other connection closes: nothing changes
    assert counts == [1]
    blocks.forget(connection)
    assert blocks.count == 0 and not blocks.suspects and counts == [1, 0]


def test_a_connection_closing_as_its_request_ends_is_not_marked():
    blocks, _ = watch()
    closing = Send(Connection())
    request(blocks, lambda: blocking(BLOCK * 2), closing)

    async def blocks_then_closes() -> None:
        time.sleep(BLOCK * 2)
        closing.connection.closing = True  # Connection: close

    request(blocks, blocks_then_closes, closing)
    assert blocks.count == 0
    request(blocks, lambda: blocking(BLOCK * 2), Send(Connection()))  # a fresh one
    assert blocks.count == 0


def test_a_request_that_raises_is_still_judged():
    blocks, _ = watch()
    send = Send(Connection())

    async def blocks_then_raises() -> None:
        time.sleep(BLOCK * 2)
        raise RuntimeError("app error")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            request(blocks, blocks_then_raises, send)
    assert blocks.count == 1
