"""Whether a worker's event loop waits in the kernel for I/O, asked of the kernel.

A worker with requests in flight stamps its load slot to show that its loop turns
(pmx.worker.process). A stamp that has gone stale says either that the loop is stuck in
a synchronous call (the case least-busy exists for) or that it sleeps in ``epoll_wait``
because its requests await something (long polls, ``await asyncio.sleep``, a slow
upstream). Stamping often enough to tell these apart from the stamps alone costs the
worker a wake-up every millisecond while it would otherwise sleep (measured in
pmx.worker.process, BUSY_SHARE).

The kernel knows which one it is: ``/proc/PID/syscall`` names the system call the
process's main thread (the one running the loop) is blocked in, or says ``running``.
The master may read it (it is the worker's parent, with the same user). One ``pread`` of
an fd kept open takes about 3 µs, and the master reads it only when a stamp has gone
stale with requests in flight, at most once per ``STUCK`` while the loop waits.
"""

from __future__ import annotations

import os
import platform

# The system calls an event loop waits in: epoll_wait, epoll_pwait, epoll_pwait2.
_WAITS = {
    "x86_64": frozenset({232, 281, 441}),
    "aarch64": frozenset({22, 441}),
}.get(platform.machine(), frozenset())


class LoopPeek:
    """Reads ``/proc/PID/syscall`` of one process, through an fd kept open."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, pid: int) -> LoopPeek | None:
        """A peek at ``pid``, or None where the kernel does not say (not Linux, an
        architecture whose numbers are not listed here, /proc hidden or refused)."""
        if not _WAITS:
            return None
        try:
            fd = os.open(f"/proc/{pid}/syscall", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        peek = cls(fd)
        try:
            os.pread(fd, 32, 0)
        except OSError:
            peek.close()
            return None
        return peek

    def waiting(self) -> bool:
        """The process is blocked in epoll: its loop is free, waiting for I/O or a
        timer. False while it runs, or is blocked in any other call (a sleep, a read
        that blocks, a lock), or is gone."""
        try:
            head = os.pread(self.fd, 8, 0).split(b" ", 1)[0]
        except OSError:
            return False
        return head.isdigit() and int(head) in _WAITS

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
