"""Which connections and which paths send requests that block the event loop.

A request blocks the loop when one step of its coroutine (the code between two awaits
that suspend) runs for longer than ``BLOCK`` seconds: a synchronous call in async code,
a CPU-bound view. The worker marks two things, each for the same reason (what blocked
will block again), each until a later request of its own completes without blocking:

- **the connection** it came on (the mark also goes when the connection closes). The
  count of marked connections is published in the load slot, and least-busy
  (pmx.master.balancer) keeps new connections away from a worker that holds one: a
  kept-alive client whose requests block is likely to block again, and a connection
  handed to its worker between two blocks waits out the next. The master may also
  gather marked connections on fewer workers (pmx.master.rebalance).
- **the path** it asked for (``scope["path"]``): the code behind an endpoint that blocked
  (a synchronous database call in an async view, a CPU-bound handler) blocks again, on
  whatever connection its next request comes. A request for a marked path is *holding*
  from its first step: the worker publishes that before the app runs, and least-busy
  hands such a worker nothing while another can take it. Without this the master could
  only see a block once the loop had missed three heartbeats, and connections handed
  over in those first milliseconds would wait out the whole block. The worker keeps at
  most MAX_PATHS paths (the oldest go first).

The marks belong to the connection and the path, not to the worker: a blocking request
on a connection that then closed says nothing about the worker's future.

History. A mark answers "will the next request block?", which for heavy-tailed requests
(most fast, one in fifty blocking for milliseconds) is nearly always no, so such a
connection is hardly ever marked; yet its blocks hold up every connection on its worker,
again and again. So the worker also keeps the connections that have blocked lately
(``blocked``: what gathering moves, pmx.master.rebalance; each until FORGET seconds
after its last judged block, or until it closes), and the paths that have
(``blocking_paths``: the newest MAX_PATHS, each likewise). Every request for a path that
has blocked lately is timed step by step (about 3 µs, below), so a heavy-tailed
connection is known at its first blocking request, on whatever connection it comes.
Not by its wall time: a request that waited behind others read in the same loop
iteration took longer than BLOCK without blocking anything (measured, judged whole, a
pool of 20 kept-alive connections on one path kept 8 to 17 of them counted as
blocking, which a release then never moved). Nor is every connection that was slow
once timed until it blocks (on a busy machine, that times every request of each
kept-alive connection a preemption once made slow: a fifth more CPU per keep-alive
request). A path or a connection is forgotten because a step can be judged blocking for
what was not its code: a loop thread that the machine stalls (measured on a virtual
machine under 4 to 19 % steal time: one fast request in a hundred or so, switched out
for 3 to 16 ms with no run-queue wait, just as a synchronous call sleeps). Then every
path blocks now and then, gathering spares nobody and stops (``gather_pays``), rightly;
but remembered for the worker's life, one such stall on a fast path would keep
gathering off for good, and so would a first request that builds a cache; on a
connection, one a proxy keeps open for hours, it would count that connection's every
visit as a blocking one (and gather it) for as long.

Visits. What gathering weighs is who it spares against who it slows: the clients
served lately whose requests could not block, against those whose could. Counted as
*visits*, a connection served at least once within a VISIT-long window, by kind: a
*blocking* visit if the connection has blocked or asked for a path that has, else a
*calm* one. Not requests: a closed-loop client whose requests wait out blocks sends
fewer of them, so counting requests undercounts exactly the clients gathering would
spare (measured: two clients blocking back to back on two workers kept two fast
clients below half the requests, and gathering never started). A kept-alive client
counts once per window whatever its rate; a client opening a connection per request
counts once per request, as the new clients they are.

Cost. Timing every step of a request (``Stepped``) costs about 3 µs a request (two
clock reads a step and one read of the run-queue wait, below), a tenth of a fast
kept-alive one. So a request is first timed as a whole, two
clock reads: one that took less than ``BLOCK`` cannot have blocked for longer. A
connection whose request took longer (it blocked, or it awaited something slow)
becomes a *suspect*, and so does its path; the requests of suspect and marked
connections, and for suspect, marked and blocking paths, are timed step by step, which
tells blocking from awaiting, and each such request judges both its connection and its
path. A path is thus marked on its second blocking request, a connection on its second, or
on its first for a path already marked (a connection gathered from another worker is
marked again at once), and a long poll is never marked. A path whose stepped request
awaited is known to await for RESAMPLE seconds: its requests are timed whole again and
make no suspects (each would be slow, and stepping them all cost 12-20 µs more a
request, below), and the first one after that is stepped again.

Preemption. A step's wall time is also what the loop's thread waited for a CPU while
runnable: on a machine whose cores are all busy the scheduler leaves a runnable thread
waiting for up to its period (6 to 24 ms), and a step of a fast path that happened to be
preempted would look like a block. On a virtual machine it is also the time the
hypervisor took the CPU itself away (steal time), which the thread does not see at all.
Neither says anything about the step's code, and marking a fast path for it makes the
master keep connections away from a free worker (measured: in minutes with 4 to 19 %
steal, several fast requests a second were judged blocking). So a step longer than BLOCK
counts its wall time less the thread's run-queue wait since its request started, and, if
the thread was never switched out since then (it did not sleep in a blocking call, nor
was it preempted), at most the CPU time it ran meanwhile: what is left of its wall time
was stolen (``SchedStat``: the kernel's counts in /proc/thread-self/schedstat, about a
microsecond a read, read when a watched request starts and after each of its steps
longer than BLOCK). The wait since the request started is at least the wait during the
step, and the CPU time since then at least the step's own: a step judged blocking did
block, or lost its CPU while the loop had run other work for as long. At worst, a
request preempted before a blocking step has that step judged too short (a later request
judges again). Some stalls still pass for blocks: a thread switched out inside a trivial
system call with no run-queue wait looks just like one sleeping in a synchronous call
(History, above).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Generator
from time import perf_counter
from typing import Any

# Seconds of one step that count as blocking: the master's STUCK (pmx.master.balancer),
# the time after which it sees the loop as stuck.
BLOCK = 0.003
# The most paths remembered as suspect or blocking.
MAX_PATHS = 1024
# Seconds a path counts as blocking after its last judged block: fifty gathering
# rounds (pmx.master.rebalance GATHER_ROUND), which weigh only the round before, and
# longer than a path blocking one request in fifty at ten requests a second goes
# between two blocks.
FORGET = 5.0
# Loop iterations a request for a blocking path lets go by before it runs (see
# BlockWatch.hold): one runs the requests already parsed, one reads what has arrived on
# the worker's connections and one runs it; a connection handed over but not yet
# adopted needs one more.
YIELDS = 4
# Seconds of one window in which each connection served counts as one visit: the
# master's GATHER_ROUND (pmx.master.rebalance), which weighs the visits of a round.
VISIT = 0.1
# Seconds a path stays known to await: its stepped request took longer than BLOCK with
# no step over it (a long poll, a call to a slow upstream, ``await asyncio.sleep``).
# Its requests are then timed as a whole, like those of a path never slow, and their
# connections are not made suspects by their wall time, except the first request after
# this long, which is stepped again: a path whose code starts to block is known within
# RESAMPLE. Stepping every request of such a path (each is slow, so each kept its path
# and connection suspect) cost more than the 3 µs of a fast one (measured: 128
# kept-alive connections looping on a 100 ms ``await asyncio.sleep``, 2 workers,
# least-busy, alternating runs: 172-179 µs of CPU a request stepping them all, 159-160
# µs so).
RESAMPLE = 1.0


class SchedStat:
    """Callable: what the kernel counts of the calling thread since it started, from
    /proc/thread-self/schedstat: ``(ran, waited, switches)``, the seconds it ran on a
    CPU, the seconds it spent runnable but waiting for one, and how many times it was
    switched in. The file is opened once, by the thread it describes (the event
    loop's); where the kernel does not keep the counts, it gives None and steps count
    their wall time."""

    __slots__ = ("fd",)

    def __init__(self, path: str = "/proc/thread-self/schedstat") -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = -1
            return
        try:
            self._read()
        except (OSError, ValueError, IndexError):
            self.close()

    def _read(self) -> tuple[float, float, int]:
        ran, waited, switches = os.pread(self.fd, 96, 0).split()[:3]
        return int(ran) * 1e-9, int(waited) * 1e-9, int(switches)

    def __call__(self) -> tuple[float, float, int] | None:
        if self.fd < 0:
            return None
        try:
            return self._read()
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


Sched = Callable[[], "tuple[float, float, int] | None"]


def no_sched() -> None:
    return None


class Stepped:
    """Awaitable that runs ``coro`` and keeps in ``longest`` its longest step, the wall
    time of each step less what was not the step's own (the module docstring,
    Preemption). ``sched`` is the loop thread's clock (``SchedStat``), read when the
    request starts and after each step longer than ``block``: not around every step,
    since a read costs about a microsecond and a fast request has a few steps
    (measured, stepping a three-step request cost 8 to 10 µs with a read around each
    step, 3 µs with these)."""

    __slots__ = ("coro", "longest", "sched", "block", "started")

    def __init__(self, coro: Coroutine[Any, Any, Any], sched: Sched = no_sched,
                 block: float = BLOCK) -> None:
        self.coro = coro
        self.longest = 0.0
        self.sched = sched
        self.block = block
        self.started = sched()

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
            self._count(perf_counter() - started)

    def throw(self, *exc: Any) -> Any:
        started = perf_counter()
        try:
            return self.coro.throw(*exc)
        finally:
            self._count(perf_counter() - started)

    def _count(self, spent: float) -> None:
        if spent > self.longest:
            if spent > self.block:
                spent = self._own(spent)
            if spent > self.longest:
                self.longest = spent

    def _own(self, spent: float) -> float:
        """What of a long step's ``spent`` seconds was its own, at most."""
        before, now = self.started, self.sched()
        if before is None or now is None:
            return spent
        spent -= now[1] - before[1]  # waited for a CPU, at least as long during the step
        if now[2] == before[2]:  # never off its CPU since the request started
            spent = min(spent, now[0] - before[0])  # the rest was stolen from its CPU
        return spent

    def close(self) -> None:
        self.coro.close()


class BlockWatch:
    """The open connections whose last request blocked the loop (``marked``), that
    blocked it lately (``blocked``) or took longer than BLOCK (``suspects``); the
    paths likewise (``paths``: True for blocked, False for suspect; ``blocking_paths``,
    blocked lately); ``holding``, the requests in flight for a blocking path; and
    ``calm_visits`` and ``blocking_visits`` (``visit``), the connections served, once
    per VISIT window, by kind.

    ``connection_of(send)`` names the connection a request's ``send`` belongs to, or None
    if it is closing or unknown (pmx.worker.bridge knows how); ``forget`` is called when
    a connection closes; ``on_change`` when the count of marked or blocked connections or
    ``holding`` changes (the worker publishes its load slot at once).
    """

    def __init__(self, connection_of: Callable[[Any], Any],
                 on_change: Callable[[], None] = lambda: None, block: float = BLOCK,
                 sched: Sched = no_sched) -> None:
        self.connection_of = connection_of
        self.on_change = on_change
        self.block = block
        self.sched = sched  # the loop thread's scheduler counts (SchedStat)
        self.marked: set[object] = set()
        self.suspects: set[object] = set()
        # Connections that have blocked lately: when each last did (perf_counter), the
        # oldest first; each until FORGET seconds after that, or until it closes.
        self.blocked: dict[object, float] = {}
        # Paths whose requests have blocked lately: when each last did (perf_counter),
        # the oldest first.
        self.blocking_paths: dict[str, float] = {}
        self.calm_visits = self.blocking_visits = 0
        self.window = 0  # the VISIT window the two sets below are for
        self.seen_calm: set[object] = set()
        self.seen_blocking: set[object] = set()
        self.paths: dict[str, bool] = {}
        # Paths known to await (RESAMPLE): when each was last stepped and found to await
        # (perf_counter), the oldest first.
        self.awaiting: dict[str, float] = {}
        self.holding = 0

    @property
    def count(self) -> int:
        return len(self.marked)

    def forget(self, connection: object) -> None:
        """``connection`` closed. Nothing of it is kept: its visit this window is
        counted already, and held in a set until the window ends it would keep its
        transport, protocol and request objects alive, which a client opening a
        connection per request turns into a thousand of each a second per worker for the
        garbage collector to walk (measured, 2 workers, 16 such clients: 220 young
        collections per 32,000 requests against 13 once closed connections let go)."""
        self.suspects.discard(connection)
        self.seen_calm.discard(connection)
        self.seen_blocking.discard(connection)
        if connection in self.marked or connection in self.blocked:
            self.marked.discard(connection)
            self.blocked.pop(connection, None)
            self.on_change()

    def watched(self, send: Any) -> object | None:
        """The connection of this request if its steps are to be timed, else None."""
        if not self.suspects and not self.marked:
            return None
        connection = self.connection_of(send)
        if connection in self.suspects or connection in self.marked:
            return connection
        return None

    def visit(self, send: Any, path: str, now: float) -> None:
        """A request (its ``send``) for ``path`` starts at ``now`` (perf_counter):
        count its connection's visit, once per VISIT window and kind."""
        window = int(now / VISIT)
        if window != self.window:
            self.window = window
            self.seen_calm.clear()
            self.seen_blocking.clear()
            _expire(self.blocking_paths, now - FORGET)
            _expire(self.awaiting, now - RESAMPLE)
            if _expire(self.blocked, now - FORGET):
                self.on_change()
        connection = self.connection_of(send)
        if connection is None:
            return
        if path in self.blocking_paths or connection in self.blocked:
            if connection not in self.seen_blocking:
                self.seen_blocking.add(connection)
                self.blocking_visits += 1
        elif connection not in self.seen_calm:
            self.seen_calm.add(connection)
            self.calm_visits += 1

    async def hold(self) -> None:
        """A request for a blocking path starts: say so (the master hands this worker
        nothing more while another can take it), then let the work that is already
        here go first, YIELDS loop iterations, before the app runs and blocks the loop.
        Under the kernel's accept a blocking request lands on a worker that is idle at
        that moment, since only an idle loop accepts; here it lands where the master
        put its connection, maybe behind requests that would otherwise wait out the
        whole block. A few hundred microseconds more for a request that blocks for
        milliseconds, against a block's worth for each request already here."""
        self.holding += 1
        self.on_change()
        for _ in range(YIELDS):
            await asyncio.sleep(0)

    def unhold(self) -> None:
        self.holding -= 1
        self.on_change()

    def awaits(self, path: str, now: float) -> bool:
        """Whether requests for ``path`` starting at ``now`` (perf_counter) need not be
        timed step by step: a stepped one found the path to await, less than RESAMPLE
        ago."""
        since = self.awaiting.get(path)
        return since is not None and now - since < RESAMPLE

    def took(self, send: Any, path: str, seconds: float) -> None:
        """A request not timed step by step took ``seconds``."""
        if seconds > self.block and path not in self.awaiting:
            connection = self.connection_of(send)
            if connection is not None:
                self.suspects.add(connection)
            self._judge(path, False)

    def stepped(self, send: Any, path: str, seconds: float, longest_step: float) -> None:
        """A request (its ``send``), timed step by step because its connection or its
        path was watched, took ``seconds``, its longest step ``longest_step``. Its path
        and its connection are judged on it."""
        awaited = False
        if longest_step > self.block:
            self._judge(path, True)
            self.awaiting.pop(path, None)
        elif seconds > self.block:
            self._judge(path, False)
            awaited = True
            _stamp(self.awaiting, path)
            if len(self.awaiting) > MAX_PATHS:
                del self.awaiting[next(iter(self.awaiting))]
        else:
            self.paths.pop(path, None)
        connection = self.connection_of(send)
        if connection is None:  # closing: forget() has been or will be called
            return
        self.suspects.discard(connection)
        was = connection in self.marked, connection in self.blocked
        if connection.is_closing():  # forget() has been or will be called
            self.marked.discard(connection)
            self.blocked.pop(connection, None)
        elif longest_step > self.block:
            self.marked.add(connection)
            _stamp(self.blocked, connection)
        else:
            self.marked.discard(connection)
            if seconds > self.block and not awaited:
                self.suspects.add(connection)
        if was != (connection in self.marked, connection in self.blocked):
            self.on_change()

    def _judge(self, path: str, blocked: bool) -> None:
        paths = self.paths
        if path not in paths and len(paths) >= MAX_PATHS:
            del paths[next(iter(paths))]
        paths[path] = blocked
        blocking = self.blocking_paths
        if blocked and _stamp(blocking, path) and len(blocking) > MAX_PATHS:
            del blocking[next(iter(blocking))]


def _stamp(since: dict[Any, float], key: Any) -> bool:
    """``key`` was judged to have blocked now: move it to the newest end of ``since``
    with the time; whether it is new there."""
    new = since.pop(key, None) is None
    since[key] = perf_counter()
    return new


def _expire(since: dict[Any, float], before: float) -> int:
    """Drop from ``since`` (oldest first) what was last seen before ``before``; how
    many."""
    dropped = 0
    while since:
        oldest = next(iter(since))
        if since[oldest] > before:
            break
        del since[oldest]
        dropped += 1
    return dropped
