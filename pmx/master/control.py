"""The daemon's line to one master (only when the daemon runs the app).

A SEQPACKET socket pair (see pmx.channel.socketpair), one JSON object per message.

daemon -> master: ``{"id": N, "op": "status" | "scale" | "stop", ...}``
master -> daemon: ``{"id": N, "ok": true, "result": ...}`` or ``{"id": N, "ok": false,
"error": "..."}``, and unsolicited events ``{"event": "ready" | "errored" | "failed", ...}``.

EOF on the channel means the daemon is gone: the master stops gracefully, so that no
master or worker outlives its supervisor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

from pmx import channel
from pmx.errors import PmxError
from pmx.master.reload import ReloadError
from pmx.master.roles import Controlled

log = logging.getLogger("pmx.master")


class Control:
    def __init__(self, sock: socket.socket, master: Controlled) -> None:
        self.sock = sock
        self.master = master
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        try:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        except (RuntimeError, ValueError):
            pass

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self._send({"event": kind, **data})

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.send(json.dumps(message).encode())
        except OSError:
            pass  # the daemon is gone; EOF will say so

    def _on_readable(self) -> None:
        for data, _fds in channel.pending(self.sock):
            if not data:
                self.close()
                log.warning("lost the daemon; stopping")
                self.master.begin_stop("daemon gone")
                return
            request = json.loads(data)
            task = asyncio.get_running_loop().create_task(self._answer(request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _answer(self, request: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": request.get("id")}
        try:
            reply.update(ok=True, result=await self._execute(request))
        except ReloadError as exc:
            reply.update(ok=False, error=exc.message, detail=exc.detail)
        except PmxError as exc:
            reply.update(ok=False, error=str(exc))
        except Exception as exc:  # a bug: the daemon still gets an answer, with the cause
            log.exception("control operation %r failed", request.get("op"))
            reply.update(ok=False, error=f"the master failed to {request.get('op')}: "
                                         f"{type(exc).__name__}: {exc}")
        self._send(reply)

    async def _execute(self, request: dict[str, Any]) -> Any:
        op = request.get("op")
        if op == "status":
            return self.master.snapshot()
        if op == "scale":
            self.master.scale(int(request["workers"]))
            return self.master.snapshot()
        if op == "reload":
            return await self.master.start_reload(int(request.get("parallel", 1)))
        if op == "stop":
            self.master.begin_stop(str(request.get("why", "pmx stop")))
            return None
        raise PmxError(f"unknown control operation '{op}'.")
