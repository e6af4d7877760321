"""Moving kept-alive connections between workers (``--rebalance``: both uses by default,
each can be had alone, ``join`` or ``drain``, or neither, ``off``).

A kept-alive connection stays with the worker that first got it; the kernel cannot
move an accepted connection, but the master can, since it passes fds: a worker hands
an idle kept-alive connection back (``B``, pmx.worker.handback) and the master hands
it to a worker in rotation through the dispatcher (``Dispatcher.rehome``), by the
balancing policy, as if it had just been accepted. Two uses:

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


def releases(loads: Sequence[int]) -> list[int]:
    """How many connections each worker should hand back so that none holds more than
    an even share (the total over the workers, rounded up). Nothing while the counts
    differ by at most one: that is as even as they get."""
    if len(loads) < 2 or max(loads) - min(loads) <= 1:
        return [0] * len(loads)
    share = -(-sum(loads) // len(loads))
    return [max(0, load - share) for load in loads]


class Rebalancer:
    def __init__(self, dispatch: Dispatcher, uses: str = "all") -> None:
        """``uses`` (``--rebalance``): ``join``, ``drain``, ``all`` (both) or ``off``."""
        self.dispatch = dispatch
        self.on_join = uses in ("all", "join")
        self.on_drain = uses in ("all", "drain")
        self.moved = 0  # connections handed back and handed on, over the app's life
        self.until = 0.0  # loop time when the current evening-out ends
        self.timer: asyncio.Handle | None = None

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
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
