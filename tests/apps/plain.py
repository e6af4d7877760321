"""A dependency-free ASGI app for tests that need fast-starting workers."""

import asyncio
import gc
import json
import os
import time


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(float(scope["query_string"].decode().partition("=")[2] or 1000) / 1000)
    if path == "/block":  # blocks the whole event loop, like a sync call in async code
        time.sleep(float(scope["query_string"].decode().partition("=")[2] or 1000) / 1000)
    if path == "/hold":  # blocks the loop until the file FILE.go exists (at most 30 s),
        # after creating FILE.held: a block that a test starts and ends when it wants
        name = scope["query_string"].decode().partition("=")[2]
        open(name + ".held", "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(name + ".go") and time.monotonic() < deadline:
            time.sleep(0.002)
    if path == "/upload":  # the request body's length
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = str(size).encode()
    elif path == "/gc":  # objects moved out of the collector's sight (gc.freeze)
        body = str(gc.get_freeze_count()).encode()
    elif path == "/env":
        keys = ("PMX_WORKER_ID", "PYTHONUNBUFFERED", "GREETING")
        body = json.dumps({k: os.environ.get(k) for k in keys}).encode()
    else:
        body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
