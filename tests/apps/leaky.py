"""Leaks 2 MiB per request (/leak); /health answers 503 while $SICK_DIR/<worker id> exists."""

import os

from tests.apps.plain import app as plain

_hoard: list[bytes] = []


async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/leak":
        _hoard.append(os.urandom(2 * 1024 * 1024))
    if scope["type"] == "http" and scope["path"] == "/health":
        sick = os.path.join(os.environ.get("SICK_DIR", "/nonexistent"),
                            os.environ["PMX_WORKER_ID"])
        status = 503 if os.path.exists(sick) else 200
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await plain(scope, receive, send)
