"""Accept connections and hand each one to a worker in rotation.

The dispatcher owns the rotation (the READY workers, ordered by id) and the watch on
the listening socket. It watches the socket only while the rotation is non-empty, so
with no ready worker connections wait in the kernel backlog instead of being dropped.
Every fd it accepts is sent to a worker or closed within the same callback: the master
never keeps a connection and never reads from one.

Accepting is batched: up to ACCEPT_BATCH connections per readiness callback are accepted
first, then shared out by the policy in one go (``share_accepted``: packed places these
apart from idle ones handed back) and sent as one message per worker (several fds in
one SCM_RIGHTS).

Before accepting, the policy ranks the workers; if it ``waits`` (least-busy: every
worker's loop is stuck), nothing is accepted: the watch on the socket is paused and the
ranks are read again every WAIT_POLL seconds until one worker can take connections.
Meanwhile connections wait in the kernel's backlog, where they would wait for workers
that accept themselves.

Connections a worker hands back (pmx.master.rebalance) come in through ``rehome`` and
take the same path: the policy shares them out among the workers in rotation other
than the one that gave them back, and they are sent in ``F`` messages. The policy is not
waited on (they are open connections, not a backlog). With no other worker in rotation
they go back to their worker if it still is; with none at all (the app is stopping)
they are closed.

When ``accept`` itself fails (EMFILE: the master is at its fd limit; ENFILE, ENOBUFS,
ENOMEM), the connection stays in the backlog and the socket stays readable: retrying at
once would spin. So accepting pauses for ACCEPT_PAUSE seconds; the first failure of an
episode is logged, and how many there were once accepting works again.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
import time
from typing import Any

from pmx import channel
from pmx.master.balancer import STUCK_NOW, Policy
from pmx.master.workers import Worker

log = logging.getLogger("pmx.master")

ACCEPT_BATCH = 64
WAIT_POLL = 0.001  # seconds between two looks at the workers while the policy waits
ACCEPT_PAUSE = 0.1  # seconds without accepting after accept() failed (EMFILE...)
# Seconds between two looks at connections left unread (least-busy) when no connection
# arrives meanwhile (each arrival is a look: the workers are ranked then anyway).
UNREAD_POLL = 0.010


class Dispatcher:
    def __init__(self, listener: socket.socket, policy: Policy) -> None:
        self.listener = listener
        self.policy = policy
        self.rotation: list[Worker] = []
        self.accepting = False
        self.closed = False
        self.waiting: asyncio.TimerHandle | None = None  # the next look while waiting
        self.accept_errors = 0  # failed accepts in the current episode
        # least-busy, packed: take back connections left unread by a worker whose loop
        # stopped
        self.reclaims = policy.watches_loops
        self.unread_check: asyncio.TimerHandle | None = None
        # Whether another connection waits in the backlog: poll() says so in well under
        # a microsecond, an accept() that fails with EAGAIN in about 3 µs (the exception).
        backlog = select.poll()
        backlog.register(listener.fileno(), select.POLLIN)
        self.queued = backlog.poll

    def add(self, worker: Worker) -> None:
        self.rotation.append(worker)
        self.rotation.sort(key=lambda w: w.id)
        self._watch()

    def remove(self, worker: Worker) -> None:
        if worker in self.rotation:
            self.rotation.remove(worker)
            if not self.rotation:
                self.pause()

    def _watch(self) -> None:
        self._stop_waiting()
        if not self.accepting and self.rotation and not self.closed:
            asyncio.get_running_loop().add_reader(self.listener.fileno(), self._on_accept)
            self.accepting = True

    def pause(self) -> None:
        self._stop_waiting()
        if self.accepting:
            asyncio.get_running_loop().remove_reader(self.listener.fileno())
            self.accepting = False

    def close(self) -> None:
        """Stop for good (the app is stopping); the caller decides about the socket."""
        self.pause()
        self.closed = True
        if self.unread_check is not None:
            self.unread_check.cancel()
            self.unread_check = None

    def _wait(self) -> None:
        """No worker can take a connection now: look again in WAIT_POLL seconds."""
        self.pause()
        self.waiting = asyncio.get_running_loop().call_later(WAIT_POLL, self._look_again)

    def _look_again(self) -> None:
        self.waiting = None
        if self.closed or not self.rotation:
            return
        if self.policy.waits(self.policy.ranks(self.rotation, time.monotonic())):
            self.waiting = asyncio.get_running_loop().call_later(WAIT_POLL, self._look_again)
        else:
            self._watch()

    def _accept_failed(self, exc: OSError) -> None:
        if not self.accept_errors:
            log.error("accept failed: %s; pausing accepts for %g s at a time until it "
                      "works", exc, ACCEPT_PAUSE)
        self.accept_errors += 1
        self.pause()
        self.waiting = asyncio.get_running_loop().call_later(ACCEPT_PAUSE, self._look_again)

    def _stop_waiting(self) -> None:
        if self.waiting is not None:
            self.waiting.cancel()
            self.waiting = None

    def _on_accept(self) -> None:
        rotation = self.rotation
        now = time.monotonic()
        ranks = self.policy.ranks(rotation, now)
        if self.reclaims and self._reclaim(rotation, ranks, now):
            ranks = self.policy.ranks(rotation, now)
        if self.policy.waits(ranks):
            self._wait()
            return
        accept = self.listener._accept  # type: ignore[attr-defined]  # (fd, addr): no socket object
        queued = self.queued
        fds: list[int] = []
        for _ in range(ACCEPT_BATCH):
            try:
                fds.append(accept()[0])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                self._accept_failed(exc)
                break
            if not queued(0):  # the backlog is empty: no accept() that fails to say so
                break
        if fds and self.accept_errors:
            log.warning("accepting again after %d failed accept(s)", self.accept_errors)
            self.accept_errors = 0
        if fds:
            self._share(rotation, ranks, fds, now, accepted=True)

    def _share(self, workers: list[Worker], ranks: list[Any], fds: list[int],
               now: float, accepted: bool = False) -> int:
        """Send ``fds`` to ``workers`` as the policy shares them out by ``ranks``, one
        message per worker, then close the master's copies. Returns how many were sent.
        ``accepted``: connections not yet served, not ones handed back idle."""
        sent = 0
        try:
            share = self.policy.share_accepted if accepted else self.policy.share
            counts = share(ranks, len(fds))
            first = 0
            for worker, count in zip(workers, counts, strict=True):
                if count:
                    sent += self._hand_off(worker, fds[first : first + count], now)
                    first += count
            return sent
        finally:
            _close_all(fds)

    def rehome(self, fds: list[int], source: Worker) -> int:
        """Hand connections ``source`` gave back to other workers; returns how many were
        sent (the rest are closed)."""
        rotation = self.rotation
        candidates = [w for w in rotation if w is not source] or (
            [source] if source in rotation else [])
        if not candidates or self.closed:
            _close_all(fds)
            return 0
        now = time.monotonic()
        return self._share(candidates, self.policy.ranks(candidates, now), fds, now)

    def send_to(self, worker: Worker, fds: list[int]) -> int:
        """Hand ``fds`` to ``worker`` to stay there even while its loop is held (another
        worker if its channel is full); returns how many were sent (the rest are
        closed). Gathering (pmx.master.rebalance) sends connections that block to a
        worker whose loop they block, to wait out its blocks there: they go over its
        channel, not its inbox, whose unread fds ``_reclaim`` takes back from a held
        loop. Through the inbox, each one gathered came straight back to the worker it
        left, round after round."""
        try:
            return self._hand_off(worker, fds, time.monotonic(), worker.chan)
        finally:
            _close_all(fds)

    def _hand_off(self, worker: Worker, fds: list[int], now: float,
                  end: socket.socket | None = None) -> int:
        try:
            channel.send_fds(end or worker.inbox or worker.chan, fds)
            worker.handed(len(fds), now)
            self._watch_unread()
            return len(fds)
        except OSError as exc:
            reason = exc
        # Its inbox is full (loop blocked) or it just died: try the others.
        for other in self.rotation:
            if other is worker:
                continue
            try:
                channel.send_fds(other.inbox or other.chan, fds)
            except OSError:
                continue
            other.handed(len(fds), now)
            self._watch_unread()
            return len(fds)
        log.error("could not hand %d connection(s) to any worker: %s", len(fds), reason)
        return 0

    def _watch_unread(self) -> None:
        if self.reclaims and self.unread_check is None and not self.closed:
            self.unread_check = asyncio.get_running_loop().call_later(
                UNREAD_POLL, self._look_at_unread)

    def _look_at_unread(self) -> None:
        self.unread_check = None
        if self.closed:
            return
        rotation = self.rotation
        now = time.monotonic()
        self._reclaim(rotation, self.policy.ranks(rotation, now), now)
        if any(worker.handoffs for worker in rotation):
            self._watch_unread()

    def _reclaim(self, rotation: list[Worker], ranks: list[Any], now: float) -> bool:
        """Connections handed to a worker whose loop has since stopped turning wait in
        its inbox until it turns again: for a whole block, where the kernel's shared
        accept would have let another worker take them. Those of a worker that ranks in
        a worse class than the best one there (least-busy's ``busy_rank``: stuck for
        over STUCK, holding a connection that blocks, or held) are taken back from its
        inbox and shared out among the workers of the best class: where a new
        connection would go now. Looked at whenever the workers are ranked for new
        connections, and every UNREAD_POLL seconds while some are unread. Returns
        whether any moved."""
        if len(ranks) < 2 or max(ranks)[0] < STUCK_NOW:  # (the class comes first)
            return False  # at every accept, and usually so: cheap
        best = min(ranks)[0]
        moved = False
        for worker, rank in zip(rotation, ranks, strict=True):
            # ranks() read the slots: ``handoffs`` holds what the worker has not read.
            if rank[0] <= best or rank[0] < STUCK_NOW or not worker.handoffs:
                continue
            fds = worker.reclaim()
            if fds:
                pairs = [(w, r) for w, r in zip(rotation, ranks, strict=True) if r[0] == best]
                worker.reclaimed += self._share([w for w, _ in pairs], [r for _, r in pairs],
                                                fds, now, accepted=True)
                moved = True
        return moved


def _close_all(fds: list[int]) -> None:
    """Close the master's copies once sent. Accepted one after another, they are
    usually consecutive numbers (the kernel hands out the lowest free one), and then
    one close_range() call closes them all. (They are distinct open fds, so n of them
    spanning exactly n numbers are that whole range and nothing else.)"""
    if len(fds) == 1:
        os.close(fds[0])
        return
    low, high = min(fds), max(fds)
    if high - low == len(fds) - 1:
        os.closerange(low, high + 1)
        return
    for fd in fds:
        os.close(fd)
