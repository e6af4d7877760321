"""Which open connections send requests that block the event loop.

A request blocks the loop when one step of its coroutine (the code between two awaits
that suspend) runs for longer than ``BLOCK`` seconds: a synchronous call in async code,
a CPU-bound view. The worker marks the connection it came on; the mark goes when the
connection closes or when a later request on it completes without blocking. The count
of marked connections is published in the load slot, and least-busy (pmx.master.balancer)
keeps new connections away from a worker that holds one: a kept-alive client whose
requests block is likely to block again, and a connection handed to its worker between
two blocks waits out the next.

The mark belongs to the connection, not to the worker: a blocking request on a
connection that then closed says nothing about the worker's future.

Timing a step costs two clock reads: a request is wrapped in ``Stepped``, which drives
the app's coroutine and keeps its longest step. A fast request is usually one step.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from time import perf_counter
from typing import Any

# Seconds of one step that count as blocking: the master's STUCK (pmx.master.balancer),
# the time after which it sees the loop as stuck.
BLOCK = 0.003


class Stepped:
    """Awaitable that runs ``coro`` and keeps in ``longest`` its longest step."""

    __slots__ = ("coro", "longest")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.longest = 0.0

    def __await__(self) -> Generator[Any, Any, Any]:
        return self  # type: ignore[return-value]

    def __iter__(self) -> Stepped:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        started = perf_counter()
        try:
            return self.coro.send(value)
        finally:
            spent = perf_counter() - started
            if spent > self.longest:
                self.longest = spent

    def throw(self, *exc: Any) -> Any:
        started = perf_counter()
        try:
            return self.coro.throw(*exc)
        finally:
            spent = perf_counter() - started
            if spent > self.longest:
                self.longest = spent

    def close(self) -> None:
        self.coro.close()


class BlockWatch:
    """The set of open connections whose last request blocked the loop.

    ``connection_of(send)`` names the connection a request's ``send`` belongs to, or None
    if it is closing or unknown (pmx.worker.bridge knows how); ``forget`` is called when
    a connection closes; ``on_change`` when the count changes.
    """

    def __init__(self, connection_of: Callable[[Any], object | None],
                 on_change: Callable[[], None] = lambda: None, block: float = BLOCK) -> None:
        self.connection_of = connection_of
        self.on_change = on_change
        self.block = block
        self.marked: set[object] = set()

    @property
    def count(self) -> int:
        return len(self.marked)

    def forget(self, connection: object) -> None:
        if connection in self.marked:
            self.marked.discard(connection)
            self.on_change()

    async def run(self, call: Coroutine[Any, Any, Any], send: Any) -> None:
        """Await one HTTP request's app call, then mark or unmark its connection."""
        stepped = Stepped(call)
        try:
            await stepped
        finally:
            self._after(send, stepped.longest > self.block)

    def _after(self, send: Any, blocked: bool) -> None:
        marked = self.marked
        if not blocked and not marked:
            return
        connection = self.connection_of(send)
        if connection is None:
            return
        if blocked and connection not in marked:
            marked.add(connection)
            self.on_change()
        elif not blocked and connection in marked:
            marked.discard(connection)
            self.on_change()
