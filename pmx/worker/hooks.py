"""The worker's per-request hook: one ASGI wrapper around the app.

While the worker drains, every response gets ``Connection: close`` (uvicorn then closes
the connection after it). A kept-alive connection is thus closed by the server only
right after answering a request, never while the client may be sending its next one on
it. Until the drain, the wrapper only passes the call through.
"""

from __future__ import annotations

from typing import Any

_CLOSE = (b"connection", b"close")


class RequestHooks:
    def __init__(self) -> None:
        self.draining = False

    def wrap(self, app: Any) -> Any:
        async def hooked(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if not self.draining or scope["type"] != "http":
                await app(scope, receive, send)
                return

            async def closing(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
                await send(message)

            await app(scope, receive, closing)

        return hooked
