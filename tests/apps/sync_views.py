"""An ASGI app whose view is synchronous code run in anyio's thread pool, as Starlette
and FastAPI run ``def`` endpoints; its lifespan startup shrinks that pool to THREADS.

``/sleep?ms=N`` sleeps N milliseconds in a thread of the pool; every response's body is
the id of the worker that served it.
"""

import os
import time

from anyio import to_thread

THREADS = 4


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                to_thread.current_default_thread_limiter().total_tokens = THREADS
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/sleep":
        ms = float(scope["query_string"].decode().partition("=")[2] or 1000)
        await to_thread.run_sync(time.sleep, ms / 1000)
    body = os.environ.get("PMX_WORKER_ID", "").encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
