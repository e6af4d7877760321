"""Moving kept-alive connections between workers (``--rebalance``: every use by default,
``all``; each can be had alone, ``join``, ``even``, ``drain`` or ``gather``; or none,
``off``).

A kept-alive connection stays with the worker that first got it; the kernel cannot
move an accepted connection, but the master can, since it passes fds: a worker hands
an idle kept-alive connection back (``B``, pmx.worker.handback) and the master hands
it to a worker in rotation through the dispatcher (``Dispatcher.rehome``), by the
balancing policy, as if it had just been accepted. Four uses:

- **A worker joins the rotation** (``join``: scale-up, a respawn after a crash, back
  from failing health checks): the busiest workers are asked to release (``L`` N) what
  they hold beyond an even share, ``releases``. Busy connections turn idle between
  requests, so the master looks again every ROUND seconds for up to WINDOW seconds and
  asks again while the counts differ by more than one. Not for a replacement (reload, recycling):
  the worker it replaces drains right after and hands it its connections, and evening
  out the others first would move some of them twice.
- **Counts left uneven** (``even``): the policy places each connection once, from what
  it sees then, and a kept-alive one stays. A worker whose loop was stuck for a moment
  (a blocking request, or on a busy machine a wait for a CPU) was passed over, and a
  pool opened meanwhile stays on the others after the loop turns again; nothing but a
  join would even it out. So every EVEN_ROUND seconds the master looks at each worker's
  *settled* connections (open at two of its looks SETTLE seconds apart, pmx.loadslot:
  kept-alive ones; a connection opened for one request lives for milliseconds, and many
  such make the plain counts differ from one moment to the next), and when the same
  workers held more than an even share of those at two looks in a row (``lasting``),
  each is asked once (``L``) for the smaller of its two excesses; the policy places what
  they hand back, as any connection handed back. Then nothing is asked for EVEN_PAUSE
  seconds: the worker keeps an ask open for a second, and the connections moved show as
  settled only once their new workers have looked twice; likewise after a worker joins
  or hands connections back (a drain, a join): in a rolling reload the replacement's
  count is low only until what the worker it replaces hands back has settled there. (Not
  a window of asks as after a join: those are made from the plain counts, and would even
  out the connections of the moment with the kept-alive ones.) Only while every loop is
  calm (``calm``): while least-busy keeps new connections away from a worker on purpose
  (a connection or request there blocks its loop, or the loop is held), fewer
  connections there is right. Nor while gathering (below) asks for connections: a
  release never moves one that has blocked, but one gathered stays marked only while it
  keeps blocking, and evening out would move it back out of the half. Not while the
  policy packs (packed, or auto with more workers than CPUs: ``evens_out``), whose
  counts are uneven by design.
- **A worker drains** (``drain``: reload, recycling, scale-down, a worker's SIGTERM): its
  STOP is ``S`` 1, and it hands back every kept-alive connection as it turns idle
  instead of closing it. Only at a full stop (the dispatcher is closed: no worker can
  take them) do workers get a plain ``S`` and close their connections as before, and a hand-back
  that crosses the stop is closed by the master.
- **Connections that block gather** (``gather``, with least-busy, whose workers keep
  them: pmx.worker.blocks). A kept-alive connection whose requests block the event loop,
  every time or one time in fifty, makes every other connection on its worker wait out
  each block. Two such connections on two workers leave no loop free; on one worker they
  leave the other free for everything else, and they only wait for each other: a request
  that blocks for 50 ms and waits 50 ms more is slowed twofold, a 1 ms request that
  waits 50 ms fiftyfold. So every GATHER_ROUND seconds the master reads each worker's
  count of open connections that have blocked lately and, once they are on more than
  half the workers (rounded down, at least one), chooses the half that hold the most and
  asks (``K`` N) for every such connection outside it to be handed back (``G``), each to
  go to the member holding the fewest (``gathering``). The half is kept while its
  workers are in rotation, so connections only ever move into it: chosen again each
  round from counts that change, it would send them back and forth. Half, not fewer: on
  one loop each such connection waits out the others' blocks, so the fewer loops they
  share the slower each gets; half leaves the rest of the traffic at least half the
  loops, and nothing moves where they already are (two such connections on two of four
  workers). And only while it pays (``gather_pays``): while the last round had more calm
  visits than blocking ones (pmx.worker.blocks: connections served, once per round,
  whose requests were for paths that never blocked, against those whose were for paths
  that have, or that have blocked themselves). Gathering slows the one kind to spare the
  other; where every path blocks now and then, nobody gains, and without this rule
  gathering them on half the workers halved what such an app served (measured: 64
  kept-alive clients on a heavy-tailed path, 4 workers, 2.6k against 4.9k requests a
  second). A visit is blocking by its path, not only by its connection's own history: a
  path is learned at its first blocks, each connection only at its own, and weighed by
  connections that have blocked, the first ones found were gathered while still a
  minority. Visits, not requests: clients whose requests wait out blocks send fewer of
  them. A release for a join (``L``) never moves a connection that has blocked: evened
  out by count, it would land on a worker that holds none. Nor does gathering run while
  a join is evened out: a gathered connection is known for what it is only once a
  request on its new worker has blocked, and until then the evening-out would take it
  for one that does not block and move it back.

The invariants each move keeps are the worker's (pmx.worker.handback): no byte is read
by two workers, no response is lost, busy connections, half-read requests and
WebSockets stay. On the master's side, a worker is counted STOPPED only once its
channel is read to the end (``Master._on_exit`` reads it before closing), so fds it
handed back while draining are never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

from pmx import channel
from pmx.loadslot import SETTLE, Load
from pmx.master.balancer import HELD_STUCK
from pmx.master.dispatch import Dispatcher
from pmx.master.workers import Worker

log = logging.getLogger("pmx.master")

ROUND = 0.05  # seconds between two looks at the counts after a worker joined
WINDOW = 1.5  # seconds after a join during which uneven counts are evened out
GATHER_ROUND = 0.1  # seconds between two looks at where the connections that block are
EVEN_ROUND = SETTLE  # seconds between two looks at the settled counts (``even``)
# Seconds without evening out after an ask: the worker keeps it open for a second
# (pmx.worker.handback), then looks twice before the moved connections show as settled.
EVEN_PAUSE = 3 * SETTLE


def releases(loads: Sequence[int]) -> list[int]:
    """How many connections each worker should hand back so that none holds more than
    an even share (the total over the workers, rounded up). Nothing while the counts
    differ by at most one: that is as even as they get."""
    if len(loads) < 2 or max(loads) - min(loads) <= 1:
        return [0] * len(loads)
    share = -(-sum(loads) // len(loads))
    return [max(0, load - share) for load in loads]


def lasting(before: Mapping[int, int], now: Mapping[int, int]) -> dict[int, int]:
    """Of the excess each worker holds now (``releases`` of the settled counts, by worker
    id), what it also held at the look before: the smaller of the two, and nothing for
    a worker that was not in both looks. Each worker counts its settled connections at
    its own moments, so one look may catch one worker's count a second behind
    another's."""
    return {i: min(count, before[i]) for i, count in now.items()
            if count and before.get(i)}


def calm(report: Load, stuck: float) -> bool:
    """Whether a worker's counts can be evened out: the policy does not keep new
    connections away from it on purpose, for a connection whose last request blocked
    its loop or a request for a path that blocks (pmx.worker.blocks), nor because its
    loop is held (stuck for longer than pmx.master.balancer HELD_STUCK; a loop serving
    a burst of requests in one go misses a few 1 ms stamps, and that is no reason).
    Connections that have blocked lately may be on it: a release never moves them, and
    where they gather is gathering's business."""
    return not (report.blockers or report.holding) and stuck <= HELD_STUCK


def gathering(blocked: Sequence[int], half: Sequence[int] | None = None,
              ) -> tuple[list[int], list[int], list[int] | None]:
    """Where the connections that block should be, given how many each worker holds:
    ``(asks, room, half)``, how many each worker should hand back, how many it should
    take, and the half they gather on (indices; None while there is none).

    The half is half the workers (rounded down, at least one). ``half`` is the one
    chosen before, kept so that connections only ever move into it; with none, and
    while the connections that block are on no more than half the workers, nothing
    moves; once they are on more, the half is the workers holding the most (the first
    on a tie). Every such connection outside the half is asked for, and each goes to
    the member of the half holding the fewest so far."""
    size = len(blocked)
    nothing = [0] * size
    keep = max(1, size // 2)
    if half is None:
        if sum(1 for count in blocked if count) <= keep:
            return nothing, nothing, None
        half = sorted(sorted(range(size), key=lambda i: (-blocked[i], i))[:keep])
    members = set(half)
    asks = [0 if i in members else blocked[i] for i in range(size)]
    room = [0] * size
    for _ in range(sum(asks)):
        fewest = min(half, key=lambda i: (blocked[i] + room[i], i))
        room[fewest] += 1
    return asks, room, list(half)


def gather_pays(calm: int, blocking: int) -> bool:
    """Whether gathering pays, from the visits of the last round (pmx.worker.blocks):
    ``calm``, of clients whose requests could not block, and ``blocking``, of those
    whose could. Gathering slows the blocking ones (each waits for the others' blocks,
    up to twofold) to keep the calm ones away from their blocks: it pays while more
    clients gain than lose. Where every client blocks now and then, none gains, and
    gathering them on half the workers would halve what the app serves."""
    return calm > blocking


class Rebalancer:
    def __init__(self, dispatch: Dispatcher, uses: str = "all") -> None:
        """``uses`` (``--rebalance``): ``join``, ``even``, ``drain``, ``gather``, ``all``
        or ``off``."""
        self.dispatch = dispatch
        self.on_join = uses in ("all", "join")
        # (and while the policy evens out: auto's choice follows the wanted workers)
        self.on_even = uses in ("all", "even")
        self.on_drain = uses in ("all", "drain")
        self.on_gather = uses in ("all", "gather")
        self.moved = 0  # connections handed back and handed on, over the app's life
        self.until = 0.0  # loop time when the current evening-out ends
        self.timer: asyncio.Handle | None = None
        self.gather_timer: asyncio.TimerHandle | None = None
        self.even_timer: asyncio.TimerHandle | None = None
        self.excess: dict[int, int] = {}  # worker id: its excess at the last look (even)
        self.resume = 0.0  # loop time before which nothing is evened out again (even)
        self.room: dict[int, int] = {}  # worker id: connections that block it should take
        self.half: list[int] | None = None  # ids of the workers they gather on
        self.gathers = False  # the last round asked for connections that block
        self.counted: dict[int, tuple[int, int]] = {}  # id: (calm, blocking visits)

    def start(self) -> None:
        """Start looking at where the connections that block are (``gather``) and at
        counts left uneven (``even``)."""
        loop = asyncio.get_running_loop()
        if self.on_gather and self.gather_timer is None:
            self.gather_timer = loop.call_later(GATHER_ROUND, self._gather_round)
        if self.on_even and self.even_timer is None:
            self.even_timer = loop.call_later(EVEN_ROUND, self._even_round)

    def stop_message(self) -> bytes:
        """What a worker leaving the rotation is told: hand back its connections if
        some worker can take them."""
        if self.on_drain and not self.dispatch.closed and self.dispatch.rotation:
            return channel.STOP_HANDING_BACK
        return channel.STOP

    def handed_back(self, worker: Worker, fds: list[int]) -> None:
        """``worker`` sent these connection fds back (a ``B`` message)."""
        self._hold_off()
        sent = self.dispatch.rehome(fds, worker)
        worker.moved += sent
        self.moved += sent
        if sent < len(fds):
            log.info("closed %d handed-back connection(s): no worker can take them",
                     len(fds) - sent)

    def gathered(self, worker: Worker, fds: list[int]) -> None:
        """``worker`` handed back connections that block (a ``G`` message): each to the
        worker with the most room left for them in the last round's plan, else as any
        handed-back connection."""
        room = self.room
        rest: list[int] = []
        for fd in fds:
            targets = [w for w in self.dispatch.rotation
                       if w is not worker and room.get(w.id, 0) > 0]
            if not targets or self.dispatch.closed:
                rest.append(fd)
                continue
            target = max(targets, key=lambda w: room[w.id])
            room[target.id] -= 1
            sent = self.dispatch.send_to(target, [fd])
            worker.moved += sent
            self.moved += sent
        if rest:
            self.handed_back(worker, rest)

    def _gather_round(self) -> None:
        self.gather_timer = asyncio.get_running_loop().call_later(
            GATHER_ROUND, self._gather_round)
        rotation = self.dispatch.rotation
        if self.dispatch.closed or len(rotation) < 2 or self.timer is not None:
            return  # (not while a join is evened out: see the module docstring)
        reports = [w.report for w in rotation]
        calm = blocking = 0
        counted: dict[int, tuple[int, int]] = {}
        for worker, report in zip(rotation, reports, strict=True):
            counted[worker.id] = now = (report.calm_visits, report.blocking_visits)
            before = self.counted.get(worker.id, now)
            calm += now[0] - before[0]
            blocking += now[1] - before[1]
        self.counted = counted
        ids = [w.id for w in rotation]
        half = self.half
        if half is not None and (len(half) != max(1, len(ids) // 2)
                                 or any(i not in ids for i in half)):
            half = None  # a worker of the half left, or the app was scaled: choose again
        asks, room, chosen = gathering([r.blocked for r in reports],
                                       None if half is None else [ids.index(i) for i in half])
        self.half = None if chosen is None else [ids[i] for i in chosen]
        if not gather_pays(calm, blocking):
            asks = room = [0] * len(rotation)
        self.gathers = any(asks)
        self.room = {w.id: count for w, count in zip(rotation, room, strict=True) if count}
        for worker, count in zip(rotation, asks, strict=True):
            if count:
                try:
                    worker.chan.send(channel.encode_release(count, channel.GATHER))
                except OSError:
                    pass  # its channel is full or it is gone: the next round asks again

    def _even_round(self) -> None:
        loop = asyncio.get_running_loop()
        self.even_timer = loop.call_later(EVEN_ROUND, self._even_round)
        rotation = self.dispatch.rotation
        now = time.monotonic()
        reports = [w.report for w in rotation]
        if (self.dispatch.closed or len(rotation) < 2 or self.timer is not None
                or not self.dispatch.policy.evens_out or self.gathers or loop.time() < self.resume
                or not all(calm(report, w.snapshot(now).stuck)
                           for w, report in zip(rotation, reports, strict=True))):
            self.excess = {}
            return
        settled = [report.settled for report in reports]
        # What each can hand back: a release never moves a connection that has blocked.
        excess = {w.id: max(0, min(ask, count - report.blocked)) for w, ask, count, report
                  in zip(rotation, releases(settled), settled, reports, strict=True)}
        asks = lasting(self.excess, excess)
        self.excess = excess
        if not asks:
            return
        log.debug("evening out kept-alive connections left uneven: %s",
                  ", ".join(f"#{w.id} {count}"
                            for w, count in zip(rotation, settled, strict=True)))
        for worker in rotation:
            if asks.get(worker.id):
                try:
                    worker.chan.send(channel.encode_release(asks[worker.id]))
                except OSError:
                    pass  # its channel is full or it is gone: asked again if still uneven
        self.resume = loop.time() + EVEN_PAUSE
        self.excess = {}

    def joined(self, worker: Worker) -> None:
        """``worker`` joined the rotation: even out the connections for a while."""
        self._hold_off()
        if not self.on_join or worker.replacement:
            return
        loop = asyncio.get_running_loop()
        self.until = loop.time() + WINDOW
        if self.timer is None:
            self.timer = loop.call_soon(self._round)

    def _round(self) -> None:
        self.timer = None
        rotation = list(self.dispatch.rotation)
        if self.dispatch.closed:
            return
        asks = releases([w.load for w in rotation])
        for worker, count in zip(rotation, asks, strict=True):
            if count:
                try:
                    worker.chan.send(channel.encode_release(count))
                except OSError:
                    pass  # its channel is full or it is gone: the next round asks again
        loop = asyncio.get_running_loop()
        if loop.time() < self.until:
            self.timer = loop.call_later(ROUND, self._round)

    def _hold_off(self) -> None:
        """Connections are moving (a worker joined, or one handed some back: a drain, a
        join's evening out, an ask of ``even``): they count as settled where they land
        only after two looks of that worker, and until then the settled counts are
        uneven by what moved. So ``even`` waits EVEN_PAUSE after the last of them (in a
        rolling reload, it would move what the replacement is being handed)."""
        self.resume = max(self.resume, asyncio.get_running_loop().time() + EVEN_PAUSE)
        self.excess = {}

    def close(self) -> None:
        for timer in (self.timer, self.gather_timer, self.even_timer):
            if timer is not None:
                timer.cancel()
        self.timer = self.gather_timer = self.even_timer = None
