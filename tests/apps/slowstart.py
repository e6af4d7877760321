"""tests.apps.plain, whose lifespan startup waits while the file named by
$SLOW_START_FLAG exists (at most 30 s): a test makes the next boot slow when it wants."""

import asyncio
import os
import time

from tests.apps.plain import app as plain


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        flag = os.environ.get("SLOW_START_FLAG", "")
        deadline = time.monotonic() + 30
        while flag and os.path.exists(flag) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    await plain(scope, receive, send)
