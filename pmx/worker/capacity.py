"""How many connections a worker can hold before it runs out of file descriptors.

Every connection is an fd. A worker at its limit cannot even receive the next one: the
kernel drops fds passed over SCM_RIGHTS that the receiver cannot install, and the
client sees its connection reset. So a worker keeps a reserve: once its open
connections reach its soft limit on open files, less the fds it had open when it got
ready, less RESERVE for the app's own (database connections, files), it must take no
more. It publishes that budget in its load slot; the master compares it with the
worker's load, which it counts itself as it hands fds over, and passes over a worker
at its budget until some connections close: a burst stops at the budget even before
the worker reads anything. The limit is read again every second, so a change made
from outside (``prlimit``) counts.
"""

from __future__ import annotations

import logging
import os
import resource

RESERVE = 64  # fds kept for the app itself

log = logging.getLogger("uvicorn.error")


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: assume a small process
        return 32


class Capacity:
    def __init__(self, reserve: int = RESERVE) -> None:
        self.reserve = reserve
        self.base = open_fds()
        self.limit = 0
        self.connections = 0  # the most connections this worker takes
        self.is_full = False
        self.refresh()

    def refresh(self) -> None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 20
        self.limit = int(soft)
        self.connections = max(1, self.limit - self.base - self.reserve)

    def full(self, connections: int) -> bool:
        """Whether a worker holding ``connections`` must take no more; says so in the
        log when that changes."""
        full = connections >= self.connections
        if full != self.is_full:
            self.is_full = full
            if full:
                log.warning("%d open connections, near the limit of %d open files: taking "
                            "no new connection until some close", connections, self.limit)
            else:
                log.info("%d open connections: taking new connections again", connections)
        return full

    def lost(self, count: int) -> None:
        """``count`` handed-off fds never arrived: the kernel could not install them."""
        log.error("%d handed-off connection(s) lost: at the limit of %d open files",
                  count, self.limit)
