"""Moving kept-alive connections between workers (``--rebalance``: every use by default,
``all``; each can be had alone, ``join``, ``drain`` or ``gather``; or none, ``off``).

A kept-alive connection stays with the worker that first got it; the kernel cannot
move an accepted connection, but the master can, since it passes fds: a worker hands
an idle kept-alive connection back (``B``, pmx.worker.handback) and the master hands
it to a worker in rotation through the dispatcher (``Dispatcher.rehome``), by the
balancing policy, as if it had just been accepted. Three uses:

- **A worker joins the rotation** (``join``: scale-up, a respawn after a crash, back
  from failing health checks): the busiest workers are asked to release (``L`` N) what
  they hold beyond an even share, ``releases``. Busy connections turn idle between
  requests, so the master looks again every ROUND seconds for up to WINDOW seconds and
  asks again while the counts differ by more than one. Not for a replacement (reload, recycling):
  the worker it replaces drains right after and hands it its connections, and evening
  out the others first would move some of them twice.
- **A worker drains** (``drain``: reload, recycling, scale-down, a worker's SIGTERM): its
  STOP is ``S`` 1, and it hands back every kept-alive connection as it turns idle
  instead of closing it. Only at a full stop (the dispatcher is closed: no worker can
  take them) do workers get a plain ``S`` and close their connections as before, and a hand-back
  that crosses the stop is closed by the master.
- **Connections that block gather** (``gather``, with least-busy, whose workers mark
  them: pmx.worker.blocks). A kept-alive connection whose requests block the event loop
  makes every other connection on its worker wait out each block. Two such connections
  on two workers leave no loop free; on one worker they leave the other free for
  everything else, and they only wait for each other: a request that blocks for 50 ms
  and waits 50 ms more is slowed twofold, a 1 ms request that waits 50 ms fiftyfold.
  So every GATHER_ROUND seconds the master reads each worker's count of connections
  that block and, where they are on more than half the workers (rounded down, at
  least one), asks (``K`` N) for them to be handed back (``G``) and sends them to the
  half that hold the most, in shares that differ by at most one (``gathering``).
  Half, not fewer: on one loop each such connection waits out the others' blocks, so
  the fewer loops they share the slower each gets; half leaves the rest of the
  traffic at least half the loops, and nothing moves where they already do (two such
  connections on two of four workers). A release for a join (``L``) never moves a
  connection that blocks: evened out by count, it would land on a worker that holds
  none. Nor does gathering run while a join is evened out: a gathered connection is
  marked again only once its first request on its new worker has blocked, and until
  then the evening-out would take it for one that does not block and move it back.

The invariants each move keeps are the worker's (pmx.worker.handback): no byte is read
by two workers, no response is lost, busy connections, half-read requests and
WebSockets stay. On the master's side, a worker is counted STOPPED only once its
channel is read to the end (``Master._on_exit`` reads it before closing), so fds it
handed back while draining are never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from pmx import channel
from pmx.master.dispatch import Dispatcher
from pmx.master.workers import Worker

log = logging.getLogger("pmx.master")

ROUND = 0.05  # seconds between two looks at the counts after a worker joined
WINDOW = 1.5  # seconds after a join during which uneven counts are evened out
GATHER_ROUND = 0.1  # seconds between two looks at where the connections that block are


def releases(loads: Sequence[int]) -> list[int]:
    """How many connections each worker should hand back so that none holds more than
    an even share (the total over the workers, rounded up). Nothing while the counts
    differ by at most one: that is as even as they get."""
    if len(loads) < 2 or max(loads) - min(loads) <= 1:
        return [0] * len(loads)
    share = -(-sum(loads) // len(loads))
    return [max(0, load - share) for load in loads]


def gathering(blockers: Sequence[int]) -> tuple[list[int], list[int]]:
    """Where the connections that block should be, given how many each worker holds:
    ``(asks, room)``, how many each worker should hand back and how many it should
    take. Where they are on more than half the workers (rounded down, at least one),
    they go to the half holding the most (the first on a tie), in shares that differ
    by at most one. Nothing moves while they are on no more than half."""
    size = len(blockers)
    holders = sum(1 for count in blockers if count)
    keep = min(holders, max(1, size // 2))
    nothing = [0] * size
    if not keep:
        return nothing, nothing
    chosen = sorted(range(size), key=lambda i: (-blockers[i], i))[:keep]
    total = sum(blockers)
    share, extra = divmod(total, keep)
    target = [0] * size
    for rank, index in enumerate(chosen):
        target[index] = share + (rank < extra)
    asks = [max(0, have - want) for have, want in zip(blockers, target, strict=True)]
    room = [max(0, want - have) for have, want in zip(blockers, target, strict=True)]
    return asks, room


class Rebalancer:
    def __init__(self, dispatch: Dispatcher, uses: str = "all") -> None:
        """``uses`` (``--rebalance``): ``join``, ``drain``, ``gather``, ``all`` or ``off``."""
        self.dispatch = dispatch
        self.on_join = uses in ("all", "join")
        self.on_drain = uses in ("all", "drain")
        self.on_gather = uses in ("all", "gather")
        self.moved = 0  # connections handed back and handed on, over the app's life
        self.until = 0.0  # loop time when the current evening-out ends
        self.timer: asyncio.Handle | None = None
        self.gather_timer: asyncio.TimerHandle | None = None
        self.room: dict[int, int] = {}  # worker id: connections that block it should take

    def start(self) -> None:
        """Start looking at where the connections that block are (``gather``)."""
        if self.on_gather and self.gather_timer is None:
            self.gather_timer = asyncio.get_running_loop().call_later(
                GATHER_ROUND, self._gather_round)

    def stop_message(self) -> bytes:
        """What a worker leaving the rotation is told: hand back its connections if
        some worker can take them."""
        if self.on_drain and not self.dispatch.closed and self.dispatch.rotation:
            return channel.STOP_HANDING_BACK
        return channel.STOP

    def handed_back(self, worker: Worker, fds: list[int]) -> None:
        """``worker`` sent these connection fds back (a ``B`` message)."""
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
        asks, room = gathering([w.report.blockers for w in rotation])
        self.room = {w.id: count for w, count in zip(rotation, room, strict=True) if count}
        for worker, count in zip(rotation, asks, strict=True):
            if count:
                try:
                    worker.chan.send(channel.encode_release(count, channel.GATHER))
                except OSError:
                    pass  # its channel is full or it is gone: the next round asks again

    def joined(self, worker: Worker) -> None:
        """``worker`` joined the rotation: even out the connections for a while."""
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

    def close(self) -> None:
        for timer in (self.timer, self.gather_timer):
            if timer is not None:
                timer.cancel()
        self.timer = self.gather_timer = None
