"""The daemon's line to one master (only when the daemon runs the app).

A SEQPACKET socket pair (see pmx.channel.socketpair) carrying pmx.wire messages:

daemon -> master: ``{"id": N, "op": "status" | "scale" | "reload" | "stop", ...}``
master -> daemon: ``{"id": N, "ok": true, "result": ...}`` or ``{"id": N, "ok": false,
"error": ERROR}``, and unsolicited events ``{"event": "ready" | "scaled" | "errored" |
"failed", ...}``; an ``errored`` or ``failed`` event carries an ERROR too.

EOF on the channel means the daemon is gone: the master stops gracefully, so that no
master or worker outlives its supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from pmx import channel, wire
from pmx.errors import PmxError
from pmx.master.roles import Controlled

log = logging.getLogger("pmx.master")


class Control:
    def __init__(self, sock: socket.socket, master: Controlled) -> None:
        self.sock = sock
        self.master = master
        self.tasks: set[asyncio.Task[None]] = set()
        self.outbox = wire.Outbox(sock)
        self.inbox = wire.Inbox()

    def start(self) -> None:
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        self.outbox.close()
        try:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        except (RuntimeError, ValueError):
            pass

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.outbox.put({"event": kind, **data})

    def fail(self, exc: PmxError) -> None:
        """The last word, once the loop has ended: a ``failed`` event, sent blocking."""
        try:
            self.sock.setblocking(True)
            wire.send_blocking(self.sock, {"event": "failed", "error": wire.error(exc)})
        except OSError:
            pass  # the daemon is gone

    def _on_readable(self) -> None:
        for data, _fds in channel.pending(self.sock):
            try:
                request = self.inbox.feed(data) if data else None
            except ValueError as exc:
                log.error("a bad control message: %s", exc)
                data = b""
            if not data:
                self.close()
                log.warning("lost the daemon; stopping")
                self.master.begin_stop("daemon gone")
                return
            if request is None:
                continue  # more frames follow
            task = asyncio.get_running_loop().create_task(self._answer(request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _answer(self, request: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": request.get("id")}
        try:
            reply.update(ok=True, result=await self._execute(request))
        except PmxError as exc:
            reply.update(wire.failure(exc))
        except Exception as exc:  # a bug: the daemon still gets an answer, with the cause
            log.exception("control operation %r failed", request.get("op"))
            reply.update(wire.failure(PmxError(f"the master failed to {request.get('op')}: "
                                               f"{type(exc).__name__}: {exc}")))
        self.outbox.put(reply)

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
