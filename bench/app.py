"""The app every server in the benchmark serves: plain ASGI, no framework.

Routes (GET):

- ``/fast``: a tiny response.
- ``/slow``: blocks the event loop for 50 ms with ``time.sleep`` (a sync call in async
  code), so the worker serving it can do nothing else meanwhile.
- ``/cpu``: burns about 10 ms of CPU in a Python loop.
- ``/leak``: appends 1 MiB to a module-level list and never frees it (memory recycling).
- ``/sleep?ms=N``: ``await asyncio.sleep(N / 1000)`` (default 100 ms): the request stays
  in flight but the event loop is free to serve others.
- ``/tail``: blocks the event loop (``time.sleep``) for a heavy-tailed duration drawn by
  the app: a Pareto distribution with scale 0.1 ms and shape 1.1, capped at 100 ms.
  About 92% of requests block under 1 ms (median 0.19 ms), 0.6% over 10 ms and 0.2% over
  30 ms (p99.9 about 55 ms); the mean is 0.6 ms. ``time.sleep`` overshoots by some
  tens of µs on Linux, the same for every server.

Every response has ``content-length`` and ``x-pid`` (the pid of the worker process that
served it), which the wrk scripts count to see how requests spread over the workers. A
request's ``x-echo`` header comes back unchanged, so that a client can time each request
(bench/count.lua's ``timed`` mode).
"""

from __future__ import annotations

import asyncio
import os
import random
import time

SLOW_SECONDS = 0.050
CPU_SECONDS = 0.010
LEAK_BYTES = 1 << 20
SLEEP_MS = 100
TAIL_SCALE_SECONDS = 0.0001
TAIL_SHAPE = 1.1
TAIL_CAP_SECONDS = 0.100

_leaked: list[bytes] = []


def _burn(seconds: float) -> int:
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        for _ in range(1000):
            n += 1
    return n


def _leak() -> int:
    # A bytes object filled with non-zero data, so every page is really resident.
    _leaked.append(b"x" * LEAK_BYTES)
    return len(_leaked)


def _tail_seconds() -> float:
    return min(TAIL_CAP_SECONDS, TAIL_SCALE_SECONDS * random.paretovariate(TAIL_SHAPE))


def _query_ms(query: bytes, default: int) -> int:
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == b"ms" and value.isdigit():
            return int(value)
    return default


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            _leaked.clear()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _drain_body(receive) -> None:
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return
        more = message.get("more_body", False)


async def app(scope, receive, send) -> None:
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
        return
    if kind != "http":
        return
    await _drain_body(receive)
    path = scope["path"]
    status = 200
    if path == "/fast":
        body = b"ok"
    elif path == "/slow":
        time.sleep(SLOW_SECONDS)
        body = b"slow"
    elif path == "/cpu":
        body = b"cpu %d" % _burn(CPU_SECONDS)
    elif path == "/sleep":
        ms = _query_ms(scope.get("query_string", b""), SLEEP_MS)
        await asyncio.sleep(ms / 1000)
        body = b"slept %d ms" % ms
    elif path == "/tail":
        seconds = _tail_seconds()
        time.sleep(seconds)
        body = b"tail %d us" % (seconds * 1e6)
    elif path == "/leak":
        body = b"leaked %d MiB" % _leak()
    else:
        status = 404
        body = b"not found"
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", b"%d" % len(body)),
        (b"x-pid", b"%d" % os.getpid()),
    ]
    for name, value in scope["headers"]:
        if name == b"x-echo":
            headers.append((b"x-echo", value))
            break
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
