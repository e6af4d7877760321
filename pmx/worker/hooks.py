"""The worker's per-request hook: one ASGI wrapper around the app.

While the worker drains, every response gets ``Connection: close`` (uvicorn then closes
the connection after it). A kept-alive connection is thus closed by the server only
right after answering a request, never while the client may be sending its next one on
it. With a BlockWatch (least-busy), each HTTP request is timed step by step to mark the
connections whose requests block the loop (pmx.worker.blocks). While the worker hands
connections back (pmx.worker.handback), each request's end is where its connection is
looked at (``after_response``): the moment a busy kept-alive connection is idle.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from pmx.worker.blocks import BlockWatch, Stepped

_CLOSE = (b"connection", b"close")


class RequestHooks:
    def __init__(self, blocks: BlockWatch | None = None) -> None:
        self.draining = False
        self.blocks = blocks
        self.after_response: Callable[[Any], None] | None = None  # called with ``send``

    def wrap(self, app: Any) -> Any:
        async def hooked(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            try:
                respond = send
                if self.draining:

                    async def closing(message: dict[str, Any]) -> None:
                        if message["type"] == "http.response.start":
                            message = {**message,
                                       "headers": [*message.get("headers", ()), _CLOSE]}
                        await send(message)

                    respond = closing
                blocks = self.blocks
                if blocks is None:
                    await app(scope, receive, respond)
                    return
                # Inline, not a coroutine of BlockWatch's: this is every request's path.
                connection = blocks.watched(send)
                path = scope.get("path", "")
                blocked = blocks.paths.get(path)  # None: never slow; True: it blocked
                started = perf_counter()
                blocks.visit(send, path, started)
                if connection is None and path not in blocks.blocking_paths and (
                        blocked is None or blocks.awaits(path, started)):
                    try:
                        await app(scope, receive, respond)
                    finally:
                        blocks.took(send, path, perf_counter() - started)
                    return
                stepped = None
                try:
                    if blocked:  # published before the app runs and blocks the loop
                        await blocks.hold()
                        started = perf_counter()
                    stepped = Stepped(app(scope, receive, respond), blocks.sched, blocks.block)
                    await stepped
                finally:
                    if blocked:
                        blocks.unhold()
                    if stepped is not None:
                        blocks.stepped(send, path, perf_counter() - started, stepped.longest)
            finally:
                after = self.after_response
                if after is not None:
                    after(send)

        return hooked
