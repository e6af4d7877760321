"""The master's side of its control channel with the daemon, on a real socket pair."""

from __future__ import annotations

import asyncio
import types

from pmx import channel, wire
from pmx.master.control import Control


def ask(request: dict) -> dict:
    async def scenario() -> dict:
        ours, theirs = channel.socketpair()
        control = Control(ours, types.SimpleNamespace(scale=print))  # type: ignore[arg-type]
        control.start()
        theirs.setblocking(False)
        loop = asyncio.get_running_loop()
        for frame in wire.frames(request):
            await loop.sock_sendall(theirs, frame)
        reply = await asyncio.wait_for(loop.sock_recv(theirs, 65536), 5)
        control.close()
        ours.close()
        theirs.close()
        message = wire.Inbox().feed(reply)
        assert message is not None
        return message

    return asyncio.run(scenario())


def test_an_unexpected_error_is_still_answered_with_its_cause():
    reply = ask({"id": 7, "op": "scale", "workers": "abc"})
    assert reply["id"] == 7 and reply["ok"] is False
    assert reply["error"] == {
        "kind": "PmxError", "detail": "",
        "message": "the master failed to scale: ValueError: invalid literal for int() with "
                   "base 10: 'abc'"}


def test_an_unknown_operation_is_refused():
    reply = ask({"id": 8, "op": "dance"})
    assert reply == {"id": 8, "ok": False, "error": {
        "kind": "PmxError", "message": "unknown control operation 'dance'.", "detail": ""}}
