"""Handing idle kept-alive connections back to the master, which moves them elsewhere.

The master asks for connections in two ways (pmx.channel): ``L`` N, *release* up to N
now (a worker joined the rotation and this one holds more than its share), and ``S`` 1,
*stop handing back* (this worker drains: every kept-alive connection goes back as it
turns idle, instead of being closed). A connection is handed back only when the bridge
finds it ``movable``: HTTP/1, idle at a request boundary, its response flushed, nothing
of the next request read. The check, ``pause_reading`` and the fd's detaching happen in
one loop step, so:

- no byte is read by two workers: from that step on this worker reads nothing, and the
  bytes the client sends wait in the kernel for the worker that adopts the fd;
- no response is lost: a response still in this worker's write buffer, or a request
  being served, makes the connection not movable; a connection that turns busy before
  that step simply stays where it is;
- a connection with half a request read is not movable (its parser holds the half);
  WebSockets are another protocol and are never movable.

The detached fds go to the master in ``B`` messages. A send that finds the channel full
keeps them queued and retries when it drains; ``flushed`` is what the drain awaits
before the worker exits, so every handed-back fd is in the master's hands first (once in
the channel, the master owns it even if this worker is gone). Only if the master itself
is gone are they closed.

Candidates are found two ways: a sweep of the open connections when asked, and a look
at the connection whose request just ended (``after_response``, called by the request
hook), which under a steady load is the moment a busy connection is idle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from pmx import channel
from pmx.worker.bridge import UvicornBridge, connection_of
from pmx.worker.hooks import RequestHooks

# A release the worker could not complete at once stays asked for this long (seconds):
# busy connections turn idle between requests. The master asks again if still uneven.
RELEASE_WINDOW = 1.0


class HandBack:
    def __init__(self, chan: socket.socket, bridge: UvicornBridge, hooks: RequestHooks) -> None:
        self.chan = chan
        self.bridge = bridge
        self.hooks = hooks  # its after_response is ours while we hand back
        self.wanted = 0  # connections asked for and not yet handed back
        self.until = 0.0  # loop time when the ask expires
        self.draining = False  # hand back every connection as it turns idle
        self.queue: list[int] = []  # detached, not yet in the channel (it was full)
        self.moved = 0  # connections handed back
        self.flushing: asyncio.Future[None] | None = None

    def release(self, count: int) -> None:
        """The master asks for ``count`` connections (replacing any earlier ask)."""
        self.wanted = count
        self.until = self.bridge.loop.time() + RELEASE_WINDOW
        self.sweep()
        self._hook()

    def drain(self) -> None:
        """From now on hand back every kept-alive connection as it turns idle."""
        self.draining = True
        self.sweep()
        self._hook()

    def cancel(self) -> None:
        """Hand nothing more back (the worker stops and closes its connections)."""
        self.wanted = 0
        self.draining = False
        self._hook()

    def _hook(self) -> None:
        """Look at each request's end only while there is something to hand back."""
        active = self.draining or self.wanted > 0
        self.hooks.after_response = self.after_response if active else None

    def sweep(self) -> None:
        """Hand back every movable connection, up to what is asked."""
        fds: list[int] = []
        for protocol in self.bridge.connections():
            if not self.draining and self.wanted <= len(fds):
                break
            fd = self.bridge.detach(protocol) if self.bridge.movable(protocol) else None
            if fd is not None:
                fds.append(fd)
        self._took(fds)

    def after_response(self, send: Any) -> None:
        """A request on this connection just ended: move it if it is movable now."""
        if not self.draining and self.bridge.loop.time() > self.until:
            self.wanted = 0  # the ask expired
            self._hook()
            return
        transport = connection_of(send)
        if transport is None:
            return
        protocol = transport.get_protocol()  # type: ignore[attr-defined]
        fd = self.bridge.detach(protocol) if self.bridge.movable(protocol) else None
        if fd is not None:
            self._took([fd])

    def _took(self, fds: list[int]) -> None:
        if not fds:
            return
        self.moved += len(fds)
        if not self.draining:
            self.wanted = max(0, self.wanted - len(fds))
            self._hook()
        self.queue.extend(fds)
        self._send()

    def _send(self) -> None:
        queue = self.queue
        while queue:
            batch = queue[: channel.MAX_FDS]
            try:
                channel.hand_back(self.chan, batch)
            except BlockingIOError:
                self._wait_writable()
                return
            except OSError as exc:  # the master is gone: nobody can take them
                logging.getLogger("uvicorn.error").warning(
                    "could not hand %d connection(s) back: %s; closing them", len(queue), exc)
                for fd in queue:
                    os.close(fd)
                queue.clear()
                break
            for fd in batch:
                os.close(fd)
            del queue[: len(batch)]
        self._unwait()

    def _wait_writable(self) -> None:
        if self.flushing is None:
            self.flushing = self.bridge.loop.create_future()
            self.bridge.loop.add_writer(self.chan.fileno(), self._send)

    def _unwait(self) -> None:
        if self.flushing is not None:
            self.bridge.loop.remove_writer(self.chan.fileno())
            if not self.flushing.done():
                self.flushing.set_result(None)
            self.flushing = None

    async def flushed(self) -> None:
        """Until every detached fd is in the channel (or the master is gone)."""
        while self.flushing is not None:
            await asyncio.shield(self.flushing)
