"""pmx.worker.blocks: timing the steps of a request and marking its connection."""

from __future__ import annotations

import asyncio
import time

import pytest

from pmx.worker.blocks import BLOCK, BlockWatch, Stepped


class Send:
    """Stands for a request's ``send``; ``connection`` is what bridge.connection_of
    would find (None: the connection is closing)."""

    def __init__(self, connection: object | None) -> None:
        self.connection = connection


def watch() -> tuple[BlockWatch, list[int]]:
    counts: list[int] = []
    blocks = BlockWatch(lambda send: send.connection, lambda: counts.append(blocks.count))
    return blocks, counts


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


def test_a_request_that_blocks_marks_its_connection_until_one_does_not():
    blocks, counts = watch()
    kept_alive = Send(object())

    async def main() -> None:
        await blocks.run(blocking(BLOCK * 2), kept_alive)
        assert blocks.count == 1
        await blocks.run(blocking(BLOCK * 2), kept_alive)  # still one connection
        assert blocks.count == 1
        await blocks.run(awaiting(BLOCK * 4), kept_alive)  # a request that does not block
        assert blocks.count == 0

    asyncio.run(main())
    assert counts == [1, 0]  # told of each change, once


def test_a_connection_that_closes_takes_its_mark_with_it():
    blocks, counts = watch()
    connection = object()

    async def main() -> None:
        await blocks.run(blocking(BLOCK * 2), Send(connection))
        # A blocking request on a connection that is closing (Connection: close)
        await blocks.run(blocking(BLOCK * 2), Send(None))

    asyncio.run(main())
    assert blocks.count == 1
    blocks.forget(object())  # some other connection closes: nothing changes
    assert counts == [1]
    blocks.forget(connection)
    assert blocks.count == 0 and counts == [1, 0]


def test_a_request_that_raises_is_still_judged():
    blocks, _ = watch()

    async def blocks_then_raises() -> None:
        time.sleep(BLOCK * 2)
        raise RuntimeError("app error")

    async def main() -> None:
        with pytest.raises(RuntimeError):
            await blocks.run(blocks_then_raises(), Send(object()))

    asyncio.run(main())
    assert blocks.count == 1
