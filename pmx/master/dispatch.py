"""Accept connections and hand each one to a worker in rotation.

The dispatcher owns the rotation (the READY workers, ordered by id) and the watch on
the listening socket. It watches the socket only while the rotation is non-empty, so
with no ready worker connections wait in the kernel backlog instead of being dropped.
Every fd it accepts is sent to a worker or closed within the same callback: the master
never keeps a connection and never reads from one.

Accepting is batched: up to ACCEPT_BATCH connections per readiness callback are accepted
first, then shared out by the policy in one go (``spread``) and sent as one message per
worker (several fds in one SCM_RIGHTS).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time

from pmx import channel
from pmx.master.balancer import Policy
from pmx.master.workers import Worker

log = logging.getLogger("pmx.master")

ACCEPT_BATCH = 64


class Dispatcher:
    def __init__(self, listener: socket.socket, policy: Policy) -> None:
        self.listener = listener
        self.policy = policy
        self.rotation: list[Worker] = []
        self.accepting = False
        self.closed = False

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
        if not self.accepting and self.rotation and not self.closed:
            asyncio.get_running_loop().add_reader(self.listener.fileno(), self._on_accept)
            self.accepting = True

    def pause(self) -> None:
        if self.accepting:
            asyncio.get_running_loop().remove_reader(self.listener.fileno())
            self.accepting = False

    def close(self) -> None:
        """Stop for good (the app is stopping); the caller decides about the socket."""
        self.pause()
        self.closed = True

    def _on_accept(self) -> None:
        accept = self.listener._accept  # type: ignore[attr-defined]  # (fd, addr): no socket object
        fds: list[int] = []
        for _ in range(ACCEPT_BATCH):
            try:
                fds.append(accept()[0])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                log.error("accept failed: %s", exc)  # EMFILE and friends
                break
        if not fds:
            return
        try:
            rotation = self.rotation
            now = time.monotonic()
            counts = self.policy.spread(rotation, len(fds), now)
            first = 0
            for worker, count in zip(rotation, counts, strict=True):
                if count:
                    self._hand_off(worker, fds[first : first + count], now)
                    first += count
        finally:
            _close_all(fds)

    def _hand_off(self, worker: Worker, fds: list[int], now: float) -> None:
        try:
            channel.send_fds(worker.chan, fds)
            worker.handed(len(fds), now)
            return
        except OSError as exc:
            reason = exc
        # Its channel is full (loop blocked) or it just died: try the others.
        for other in self.rotation:
            if other is worker:
                continue
            try:
                channel.send_fds(other.chan, fds)
            except OSError:
                continue
            other.handed(len(fds), now)
            return
        log.error("could not hand %d connection(s) to any worker: %s", len(fds), reason)


def _close_all(fds: list[int]) -> None:
    """Close the master's copies once sent. Accepted one after another, they are
    usually consecutive numbers (the kernel hands out the lowest free one), and then
    one close_range() call closes them all. (They are distinct open fds, so n of them
    spanning exactly n numbers are that whole range and nothing else.)"""
    low, high = min(fds), max(fds)
    if high - low == len(fds) - 1 and len(fds) > 1:
        os.closerange(low, high + 1)
        return
    for fd in fds:
        os.close(fd)
