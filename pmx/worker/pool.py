"""The thread pool an app's blocking code runs in, as far as its worker can see it.

A worker's event loop may turn while every thread its app runs views in is taken; a new
request there then waits for a thread while another worker's threads are idle. The
master's ``packed`` placement (pmx.master.balancer) passes over such a worker, so it
needs the pool's size (told in the worker's READY message) and how many of its threads
are taken now (published in the load slot with the other counts, pmx.loadslot):

- a WSGI app runs every request in a2wsgi's pool (``WSGI_THREADS``): the requests in
  flight are the threads taken;
- an ASGI app that runs synchronous code through anyio (Starlette's and FastAPI's
  ``def`` endpoints, ``run_in_threadpool``) uses anyio's default limiter, 40 threads
  unless the app changed it at startup: the tokens borrowed are the threads taken;
- an ASGI app that runs only on its event loop takes none of them.

uvicorn imports anyio (through watchfiles), so an ASGI app's worker reports anyio's
pool whether the app uses it or not; where anyio is missing, it reports none.
"""

from __future__ import annotations

import sys
from typing import Any

# Threads of the pool a WSGI app's views run in, per worker (a2wsgi's default): a worker
# runs at most this many views at once, and more requests wait for a thread.
WSGI_THREADS = 10


class Pool:
    """No pool: the app runs on the event loop."""

    size = 0

    def taken(self, inflight: int) -> int:
        """Threads taken now, given the requests in flight (the publishing hot path)."""
        return 0


class WsgiPool(Pool):
    """a2wsgi's: every request holds a thread (or waits for one) while in flight."""

    size = WSGI_THREADS

    def taken(self, inflight: int) -> int:
        return inflight


class AnyioPool(Pool):
    """anyio's default thread limiter: what ``to_thread.run_sync`` borrows from."""

    def __init__(self, limiter: Any) -> None:
        self.limiter = limiter

    @property
    def size(self) -> int:  # type: ignore[override]
        return int(self.limiter.total_tokens)

    def taken(self, inflight: int) -> int:
        return int(self.limiter.borrowed_tokens)


def pool_of(interface: str) -> Pool:
    """The pool of an app of ``interface``, looked up on the running event loop after the
    app's startup (anyio keeps one default limiter per loop, and an app may resize it
    then). anyio is looked for only if already imported (uvicorn imports it)."""
    if interface == "wsgi":
        return WsgiPool()
    if "anyio" not in sys.modules:
        return Pool()
    try:
        from anyio import to_thread

        return AnyioPool(to_thread.current_default_thread_limiter())
    except Exception:  # an anyio without it, or not usable on this loop
        return Pool()
