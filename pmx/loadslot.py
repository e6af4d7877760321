"""A worker's live load, in a few bytes of memory shared with its master.

The worker writes its counters whenever they change; the master reads them when it
picks a worker for a connection. No message, no system call on either side, and the
master's view is never behind: this is what lets a load-aware policy cost nothing on
keep-alive traffic and see a stalled event loop the moment it stalls.

Layout (native order, 8-byte fields): fds taken in (each now an open connection, or
dropped if it failed before opening; pmx.worker.bridge), open connections, requests in
flight, requests served, open connections whose last request blocked the loop and
requests in flight expected to block it (pmx.worker.blocks), its budget (how many
connections its fd limit lets it hold: pmx.worker.capacity), open connections that have
blocked the loop at least once (what gathering moves: pmx.master.rebalance), calm and
blocking visits (what it weighs: pmx.worker.blocks), *settled* connections (open at two
of its looks SETTLE seconds apart: kept-alive ones, not those opened for one request,
which is what evening out counts: pmx.master.rebalance), the threads of its app's pool
taken (pmx.worker.pool; what packed passes over a worker for), its heartbeat's
``slack`` (seconds its next stamp may come later than a busy loop's: its requests in
flight have been quiet, pmx.worker.process), and ``active_at``: ``time.monotonic()``
when the worker last made progress (adopted a connection, started or finished a
request, or its heartbeat ran while requests were in flight).
CLOCK_MONOTONIC is system-wide, so the master can compare it with its own clock. A write
copies the packed record over the old one; a reader may see a mix of two writes, which
only blurs a heuristic for one pick, but never fields that were not written.

The memory is a memfd (an anonymous file in RAM, Linux), or elsewhere an unlinked
temporary file, shared by passing its fd to the worker. Not a file in TMPDIR on Linux:
pages of a sparse file there are allocated on first write, and a full disk turns that
write into a SIGBUS.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Load:
    received: int = 0
    connections: int = 0
    inflight: int = 0
    requests: int = 0
    blockers: int = 0
    holding: int = 0
    budget: int = 0
    blocked: int = 0
    calm_visits: int = 0
    blocking_visits: int = 0
    settled: int = 0
    threads_taken: int = 0
    slack: float = 0.0


# Seconds between two looks of a worker at its open connections: those open at both
# are *settled*.
SETTLE = 1.0
_LAYOUT = struct.Struct("=QQQQQQQQQQQQdd")
_SIZE = _LAYOUT.size
_pack = _LAYOUT.pack
_monotonic = time.monotonic
SIZE = mmap.PAGESIZE


class LoadSlot:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.memory = mmap.mmap(fd, SIZE)

    @classmethod
    def create(cls) -> LoadSlot:
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("pmx-load", os.MFD_CLOEXEC)
        else:
            with tempfile.TemporaryFile() as backing:
                fd = os.dup(backing.fileno())
        os.ftruncate(fd, SIZE)
        return cls(fd)

    def put(self, received: int, connections: int, inflight: int, requests: int,
            blockers: int, holding: int = 0, budget: int = 0, blocked: int = 0,
            calm_visits: int = 0, blocking_visits: int = 0, settled: int = 0,
            threads_taken: int = 0, slack: float = 0.0) -> float:
        """Write the counters, stamped with the time (the worker's hot path); the
        stamp."""
        # Not pack_into: it zeroes the whole record before filling it in, and a reader
        # in between would see zeros. A slice assignment only ever overwrites bytes.
        now = _monotonic()
        self.memory[:_SIZE] = _pack(received, connections, inflight, requests, blockers,
                                    holding, budget, blocked, calm_visits,
                                    blocking_visits, settled, threads_taken, slack, now)
        return now

    def raw(self) -> tuple[int, int, int, int, int, int, int, int, int, int, int, int, float,
                           float]:
        """(received, connections, inflight, requests, blockers, holding, budget,
        blocked, calm_visits, blocking_visits, settled, threads_taken, slack,
        active_at)."""
        return _LAYOUT.unpack_from(self.memory)  # type: ignore[return-value]

    def read(self) -> tuple[Load, float]:
        *counts, active_at = _LAYOUT.unpack_from(self.memory)
        return Load(*counts), active_at

    def close(self) -> None:
        self.memory.close()
        os.close(self.fd)
