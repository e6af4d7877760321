"""pmx.worker.blocks: timing the steps of a request and marking its connection."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import weakref
from time import perf_counter

import pytest

from pmx.worker.blocks import (
    FORGET,
    MAX_PATHS,
    RESAMPLE,
    VISIT,
    BlockWatch,
    SchedStat,
    Stepped,
)
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
    """A BlockWatch and what it told of each change: (marked connections, holding)."""
    counts: list[tuple[int, int]] = []
    blocks = BlockWatch(connection_of, lambda: counts.append((blocks.count, blocks.holding)),
                        block=BLOCK)
    return blocks, counts


def request(blocks: BlockWatch, work, send: Send, path: str = "/") -> None:
    """One HTTP request for ``path`` whose app runs ``work()``, through the worker's
    hooks."""

    async def app(scope, receive, send) -> None:
        await work()

    asyncio.run(RequestHooks(blocks).wrap(app)({"type": "http", "path": path}, None, send))


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


class SchedClock:
    """Stands for SchedStat: each read after the first says the thread waited
    ``waits`` seconds more for a CPU, ran ``runs`` seconds more on one, and was switched
    out and back in once more if it ``sleeps`` (a blocking call, or a preemption)."""

    def __init__(self, waits: float = 0.0, runs: float = 0.0, sleeps: bool = True) -> None:
        self.waits, self.runs, self.sleeps = waits, runs, sleeps
        self.reads = 0

    def __call__(self) -> tuple[float, float, int]:
        reads = self.reads
        self.reads += 1
        return reads * self.runs, reads * self.waits, reads if self.sleeps else 0


def test_a_step_does_not_count_the_time_its_thread_waited_for_a_cpu():
    async def main() -> tuple[float, float]:
        preempted = Stepped(blocking(BLOCK * 3), SchedClock(waits=BLOCK * 2.5))
        await preempted
        blocked = Stepped(blocking(BLOCK * 3), SchedClock())
        await blocked
        return preempted.longest, blocked.longest

    preempted, blocked = asyncio.run(main())
    assert preempted < BLOCK <= BLOCK * 3 <= blocked


def test_a_step_does_not_count_the_time_stolen_from_its_cpu():
    """On a virtual machine the hypervisor may take the CPU away mid-step: the thread was
    never switched out, and ran for less than the step's wall time. A step that ran on
    its CPU all along (a CPU-bound view) still counts whole."""
    async def main() -> tuple[float, float]:
        stolen = Stepped(blocking(BLOCK * 3), SchedClock(runs=BLOCK / 10, sleeps=False))
        await stolen
        busy = Stepped(blocking(BLOCK * 3), SchedClock(runs=BLOCK * 3, sleeps=False))
        await busy
        return stolen.longest, busy.longest

    stolen, busy = asyncio.run(main())
    assert stolen < BLOCK <= BLOCK * 3 <= busy


def test_a_path_preempted_on_a_busy_machine_is_not_marked():
    """Requests that took 2 BLOCK, all of it waiting for a CPU, leave their connection
    and path at most suspect: their code did not block the loop."""
    blocks = BlockWatch(connection_of, block=BLOCK, sched=SchedClock(waits=BLOCK * 2))
    kept_alive = Send(Connection())
    for _ in range(3):
        request(blocks, lambda: blocking(BLOCK * 2), kept_alive, "/fast")
    assert blocks.count == 0 and blocks.paths.get("/fast") is not True


def test_run_queue_wait_grows_while_the_thread_shares_its_cpu():
    """The real clock: pinned to one CPU with a busy process, this thread spends about
    half of a busy step waiting for it, and the step counts only the other half."""
    sched = SchedStat()
    if sched() is None:
        pytest.skip("this kernel keeps no scheduler counts (/proc/thread-self/schedstat)")
    allowed = os.sched_getaffinity(0)
    cpu = {min(allowed)}
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(hog.pid, cpu)
        os.sched_setaffinity(0, cpu)  # this thread only

        async def busy(seconds: float) -> None:
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                pass

        async def main() -> tuple[float, float]:
            before = sched()
            step = Stepped(busy(0.2), sched)
            await step
            after = sched()
            assert before is not None and after is not None
            return after[1] - before[1], step.longest

        queued, longest = asyncio.run(main())
    finally:
        os.sched_setaffinity(0, allowed)
        hog.kill()
        hog.wait()
        sched.close()
    assert queued > 0.04, f"waited {queued:.3f} s for the CPU in a 0.2 s busy step"
    assert longest < 0.2 - 0.04


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
    assert blocks.count == 0 and not blocks.suspects  # it awaited: nothing to suspect
    # told of each change once; the path blocked too, so the third and fourth requests
    # were holding while they ran
    assert counts == [(1, 0), (1, 1), (1, 0), (1, 1), (1, 0), (0, 0)]


def test_a_connection_served_counts_one_visit_a_window_by_kind():
    """What gathering weighs: each connection once per VISIT window, as blocking if it
    has blocked or asked for a path that has, else as calm; whatever its rate."""
    blocks, _counts = watch()
    start = 10000.5 * VISIT  # mid-window: float steps stay inside it
    blocks.blocking_paths["/slow"] = start
    calm, slow, known = (Send(Connection()) for _ in range(3))
    blocks.blocked[known.connection] = start
    for step in range(10):  # ten requests each within one window
        now = start + step * VISIT / 20
        blocks.visit(calm, "/fast", now)
        blocks.visit(slow, "/slow", now)
        blocks.visit(known, "/fast", now)
    assert (blocks.calm_visits, blocks.blocking_visits) == (1, 2)
    blocks.visit(calm, "/fast", start + VISIT)  # the next window
    blocks.visit(calm, "/slow", start + VISIT)  # both kinds within it
    assert (blocks.calm_visits, blocks.blocking_visits) == (2, 3)
    closing = Send(Connection())
    closing.connection.closing = True
    blocks.visit(closing, "/fast", start + VISIT)  # closing: nobody to count
    assert (blocks.calm_visits, blocks.blocking_visits) == (2, 3)
    request(blocks, lambda: awaiting(0), Send(Connection()), "/fast")  # through the hooks
    assert (blocks.calm_visits, blocks.blocking_visits) == (3, 3)


def test_a_path_that_has_not_blocked_lately_is_forgotten():
    """A step judged blocking may have been the machine's stall, not the path's code:
    remembered for ever, it would count every later visit to that path as a blocking
    one. A path that keeps blocking stays."""
    blocks, _counts = watch()
    start = 10000.5 * VISIT
    blocks.blocking_paths.update({"/once": start, "/often": start})
    calm = Send(Connection())
    for step in range(1, int(FORGET / VISIT) + 3):
        now = start + step * VISIT
        blocks.blocking_paths["/often"] = now  # blocks again, every window
        blocks.visit(calm, "/once", now)
    assert list(blocks.blocking_paths) == ["/often"]
    before = blocks.calm_visits
    blocks.visit(calm, "/once", now + VISIT)
    assert blocks.calm_visits == before + 1  # a calm visit again


def test_a_connection_that_has_not_blocked_lately_is_forgotten():
    """Likewise a connection (a pooled one from a proxy may live for hours): once
    forgotten it counts calm visits again, and the master is told at once, since it
    gathers by the count of connections that have blocked."""
    blocks, counts = watch()
    start = 10000.5 * VISIT
    once, often = Send(Connection()), Send(Connection())
    blocks.blocked.update({once.connection: start, often.connection: start})
    for step in range(1, int(FORGET / VISIT) + 3):
        now = start + step * VISIT
        blocks.blocked[often.connection] = now  # blocks again, every window
        blocks.visit(once, "/fast", now)
    assert list(blocks.blocked) == [often.connection]
    assert len(counts) == 1  # told once, when it was forgotten
    before = blocks.calm_visits
    blocks.visit(once, "/fast", now + VISIT)
    assert blocks.calm_visits == before + 1
    judged = time.perf_counter()
    request(blocks, lambda: blocking(BLOCK * 2), often, "/fast")  # judged whole
    request(blocks, lambda: blocking(BLOCK * 2), often, "/fast")  # timed: it blocks
    assert blocks.blocked[often.connection] >= judged  # a block keeps it for longer


def test_a_connection_that_blocked_keeps_that_history_until_it_closes():
    """Heavy-tailed: most requests are fast, one now and then blocks. The mark (what
    least-busy avoids) goes with the next fast request; the history (what gathering
    moves) stays with the connection. Once its path is known to block, another
    connection has that history from its first slow request on."""
    blocks, counts = watch()
    kept_alive = Send(Connection())
    request(blocks, lambda: blocking(BLOCK * 2), kept_alive)  # judged whole: a suspect
    request(blocks, lambda: blocking(BLOCK * 2), kept_alive)  # timed: it blocks
    assert list(blocks.blocked) == [kept_alive.connection] and blocks.count == 1
    assert list(blocks.blocking_paths) == ["/"]
    for _ in range(2):
        request(blocks, lambda: awaiting(0), kept_alive)
    assert blocks.count == 0 and list(blocks.blocked) == [kept_alive.connection]
    assert not blocks.suspects  # a fast request clears the suspicion: no cost after
    other = Send(Connection())
    request(blocks, lambda: awaiting(0), other)
    assert other.connection not in blocks.blocked
    request(blocks, lambda: blocking(BLOCK * 2), other)  # timed: its path blocks lately
    assert list(blocks.blocked) == [kept_alive.connection, other.connection]
    for connection in (kept_alive.connection, other.connection):
        blocks.forget(connection)
    assert not blocks.blocked and not blocks.suspects
    assert counts[-1] == (0, 0)


def test_a_request_that_waited_on_a_blocking_path_does_not_count_its_connection():
    """Slow is not blocking: a request for a path that blocks now and then may take
    longer than BLOCK waiting behind the others its loop runs, with no step of its own
    that long. Its connection counts as blocking only once one of its requests blocks."""
    blocks, _counts = watch()
    for _ in range(2):
        once(blocks, lambda: blocking(BLOCK * 2), "/report")
    once(blocks, lambda: awaiting(0), "/report")  # a fast one: the path no longer holds
    assert "/report" in blocks.blocking_paths and "/report" not in blocks.paths
    pooled = Send(Connection())
    request(blocks, lambda: awaiting(BLOCK * 4), pooled, "/report")  # slow, steps short
    assert not blocks.blocked and not blocks.marked
    request(blocks, lambda: blocking(BLOCK * 2), pooled, "/report")  # its first block
    assert list(blocks.blocked) == [pooled.connection] and blocks.count == 1


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
    assert counts == [(1, 0)]
    blocks.forget(connection)
    assert blocks.count == 0 and not blocks.suspects and counts == [(1, 0), (0, 0)]


def test_nothing_of_a_closed_connection_is_kept():
    """Its visit stays counted, but no set of the watch holds it once it closed (it would
    keep its objects alive until the window ends)."""
    blocks, _ = watch()
    start = 10000.5 * VISIT
    blocks.blocking_paths["/slow"] = start
    calm, slow = Connection(), Connection()
    blocks.visit(Send(calm), "/fast", start)
    blocks.visit(Send(slow), "/slow", start)
    gone = weakref.ref(calm), weakref.ref(slow)
    blocks.forget(calm)
    blocks.forget(slow)
    del calm, slow
    assert [ref() for ref in gone] == [None, None]
    assert (blocks.calm_visits, blocks.blocking_visits) == (1, 1)


def test_a_connection_closing_as_its_request_ends_is_not_marked():
    blocks, _ = watch()
    closing = Send(Connection())
    request(blocks, lambda: blocking(BLOCK * 2), closing)

    async def blocks_then_closes() -> None:
        time.sleep(BLOCK * 2)
        closing.connection.closing = True  # Connection: close

    request(blocks, blocks_then_closes, closing)
    assert blocks.count == 0
    # a fresh one, on a path never seen: judged as a whole, no more than a suspect
    request(blocks, lambda: blocking(BLOCK * 2), Send(Connection()), "/other")
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


def once(blocks: BlockWatch, work, path: str) -> None:
    """A request on a connection of its own, closed as the request ends
    (``Connection: close``)."""
    send = Send(Connection())

    async def then_close() -> None:
        await work()
        send.connection.closing = True

    request(blocks, then_close, send, path)


def test_a_path_that_blocked_holds_from_its_first_step_on_any_connection():
    blocks, counts = watch()
    seen: list[int] = []

    async def slow() -> None:
        seen.append(blocks.holding)  # what the master could read before the block
        time.sleep(BLOCK * 2)

    for _ in range(2):  # each on a connection of its own: none is ever marked
        once(blocks, slow, "/slow")
    assert blocks.paths == {"/slow": True} and seen == [0, 0] and counts == []
    once(blocks, slow, "/slow")
    assert seen == [0, 0, 1]  # published before the app ran
    assert counts == [(0, 1), (0, 0)] and blocks.holding == 0 and blocks.count == 0


def test_a_kept_alive_connection_on_a_blocking_path_is_marked_on_its_first_block():
    blocks, counts = watch()
    for _ in range(2):
        once(blocks, lambda: blocking(BLOCK * 2), "/slow")
    kept_alive = Send(Connection())  # e.g. just moved here from another worker
    request(blocks, lambda: blocking(BLOCK * 2), kept_alive, "/slow")
    assert blocks.marked == {kept_alive.connection}


def test_other_paths_are_not_held_and_a_path_that_stops_blocking_is_forgotten():
    blocks, counts = watch()
    for _ in range(2):
        once(blocks, lambda: blocking(BLOCK * 2), "/slow")
    once(blocks, lambda: awaiting(0), "/fast")
    assert counts == [] and "/fast" not in blocks.paths
    once(blocks, lambda: awaiting(0), "/slow")  # held, did not block
    assert blocks.paths == {} and counts == [(0, 1), (0, 0)]
    once(blocks, lambda: awaiting(BLOCK * 4), "/poll")
    once(blocks, lambda: awaiting(BLOCK * 4), "/poll")
    assert blocks.paths == {"/poll": False}  # slow but awaiting: suspect, never holding


def test_a_path_that_awaits_is_timed_as_a_whole_until_it_is_sampled_again(monkeypatch):
    """A path whose stepped request awaited (slow, the loop free) is known to await:
    its requests are no longer timed step by step, nor do they make their connection a
    suspect, until RESAMPLE has gone by; then one is stepped again, and if it blocked,
    the path is a blocking one from then on."""
    blocks, _counts = watch()
    kept_alive = Send(Connection())
    request(blocks, lambda: awaiting(BLOCK * 4), kept_alive, "/poll")  # judged whole
    assert blocks.suspects == {kept_alive.connection} and not blocks.awaiting
    request(blocks, lambda: awaiting(BLOCK * 4), kept_alive, "/poll")  # stepped: awaits
    assert "/poll" in blocks.awaiting and not blocks.suspects
    stepped = []
    monkeypatch.setattr(blocks, "stepped", lambda *args: stepped.append(args))
    for _ in range(3):  # timed whole: no stepping, no suspicion
        request(blocks, lambda: awaiting(BLOCK * 4), kept_alive, "/poll")
    assert stepped == [] and not blocks.suspects
    monkeypatch.undo()
    # RESAMPLE later, its code blocks: that request is stepped, and says so.
    blocks.awaiting["/poll"] -= RESAMPLE
    request(blocks, lambda: blocking(BLOCK * 2), kept_alive, "/poll")
    assert "/poll" in blocks.blocking_paths and "/poll" not in blocks.awaiting


def test_paths_known_to_await_are_bounded_and_expire():
    blocks, _ = watch()
    for number in range(MAX_PATHS + 10):
        blocks.stepped(Send(Connection()), f"/poll/{number}", BLOCK * 4, BLOCK / 10)
    assert len(blocks.awaiting) == MAX_PATHS and "/poll/0" not in blocks.awaiting
    blocks.visit(Send(Connection()), "/", perf_counter() + RESAMPLE + VISIT)
    assert not blocks.awaiting


def test_the_paths_remembered_are_bounded():
    blocks, _ = watch()
    for number in range(MAX_PATHS + 10):
        blocks.took(Send(Connection()), f"/item/{number}", BLOCK * 2)
    assert len(blocks.paths) == MAX_PATHS
    assert "/item/0" not in blocks.paths and f"/item/{MAX_PATHS + 9}" in blocks.paths


def test_a_request_for_a_blocking_path_lets_the_work_already_here_go_first():
    blocks, _ = watch()
    for _ in range(2):
        once(blocks, lambda: blocking(BLOCK * 2), "/slow")
    order: list[str] = []

    async def app(scope, receive, send) -> None:
        if scope["path"] == "/slow":
            order.append("slow starts")
            time.sleep(BLOCK * 2)
        else:
            await asyncio.sleep(0)  # a fast request that takes two loop iterations
            order.append("fast done")

    hooked = RequestHooks(blocks).wrap(app)

    async def main() -> None:
        slow = asyncio.ensure_future(hooked({"type": "http", "path": "/slow"}, None,
                                            Send(Connection())))
        fast = asyncio.ensure_future(hooked({"type": "http", "path": "/fast"}, None,
                                            Send(Connection())))
        await asyncio.gather(slow, fast)
        # cancelled while it lets others go first: no longer counted as holding
        held = asyncio.ensure_future(hooked({"type": "http", "path": "/slow"}, None,
                                            Send(Connection())))
        await asyncio.sleep(0)
        assert blocks.holding == 1
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held

    asyncio.run(main())
    assert order == ["fast done", "slow starts"]  # the slow one was scheduled first
    assert blocks.holding == 0
