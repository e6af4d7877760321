"""Per-request hooks of the worker, in one ASGI wrapper around the app.

- While the worker drains, every response gets ``Connection: close`` (uvicorn then
  closes the connection after it). A kept-alive connection is thus closed by the
  server only right after answering a request, never while the client may be sending
  its next one on it.
- With a load-aware policy, the master is told a request is done *before* its last
  bytes go out; otherwise the client can read the response and open its next
  connection before the master hears this worker is free again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_CLOSE = (b"connection", b"close")


class RequestHooks:
    def __init__(self, on_finish: Callable[[], None] | None = None) -> None:
        self.draining = False
        self.finishing = 0  # responses whose final body is being sent
        self.on_finish = on_finish

    def wrap(self, app: Any) -> Any:
        async def hooked(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            finished = False

            async def watch(message: dict[str, Any]) -> None:
                nonlocal finished
                kind = message["type"]
                if kind == "http.response.start" and self.draining:
                    message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
                elif kind == "http.response.body" and not finished and not message.get(
                    "more_body"
                ):
                    finished = True
                    if self.on_finish is not None:
                        self.finishing += 1
                        self.on_finish()
                await send(message)

            try:
                await app(scope, receive, watch)
            finally:
                if finished and self.on_finish is not None:
                    self.finishing -= 1

        return hooked
