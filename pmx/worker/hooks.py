"""The worker's per-request hook: one ASGI wrapper around the app.

While the worker drains, every response gets ``Connection: close`` (uvicorn then closes
the connection after it). A kept-alive connection is thus closed by the server only
right after answering a request, never while the client may be sending its next one on
it. With a BlockWatch (least-busy), each HTTP request is timed step by step to mark the
connections whose requests block the loop (pmx.worker.blocks).
"""

from __future__ import annotations

from typing import Any

from pmx.worker.blocks import BlockWatch

_CLOSE = (b"connection", b"close")


class RequestHooks:
    def __init__(self, blocks: BlockWatch | None = None) -> None:
        self.draining = False
        self.blocks = blocks

    def wrap(self, app: Any) -> Any:
        async def hooked(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            respond = send
            if self.draining:

                async def closing(message: dict[str, Any]) -> None:
                    if message["type"] == "http.response.start":
                        message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
                    await send(message)

                respond = closing
            if self.blocks is None:
                await app(scope, receive, respond)
            else:
                await self.blocks.run(app(scope, receive, respond), send)

        return hooked
