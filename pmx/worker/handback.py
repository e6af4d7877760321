"""Handing idle kept-alive connections back to the master, which moves them elsewhere.

The master asks for connections in three ways (pmx.channel): ``L`` N, *release* up to N
now (a worker joined the rotation and this one holds more than its share); ``K`` N,
*gather*: hand back up to N connections that have blocked the loop (pmx.worker.blocks), which
the master gathers on fewer workers; and ``S`` 1, *stop handing back* (this worker
drains: every kept-alive connection goes back as it turns idle, instead of being
closed). A release leaves connections that block where they are: evened out by count,
they would land on the workers that hold none. A connection is handed back only when the bridge
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

The detached fds go to the master in ``B`` messages, those that block in ``G``. A send
that finds the channel full keeps them queued and retries when it drains; ``flushed`` is
what the drain awaits before the worker exits, so every handed-back fd is in the
master's hands first (once in the channel, the master owns it even if this worker is
gone). Only if the master itself is gone are they closed.

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
from pmx.worker.blocks import BlockWatch
from pmx.worker.bridge import UvicornBridge, connection_of
from pmx.worker.hooks import RequestHooks

# A release the worker could not complete at once stays asked for this long (seconds):
# busy connections turn idle between requests. The master asks again if still uneven.
RELEASE_WINDOW = 1.0


class HandBack:
    def __init__(self, chan: socket.socket, bridge: UvicornBridge, hooks: RequestHooks,
                 blocks: BlockWatch | None = None) -> None:
        self.chan = chan
        self.bridge = bridge
        self.hooks = hooks  # its after_response is ours while we hand back
        self.blocks = blocks  # which connections block (least-busy), or None
        self.wanted = 0  # connections asked for (``L``) and not yet handed back
        self.gathering = 0  # connections that block asked for (``K``), likewise
        self.until = 0.0  # loop time when the asks expire
        self.draining = False  # hand back every connection as it turns idle
        # detached, not yet in the channel (it was full), by message kind
        self.queues: dict[bytes, list[int]] = {channel.HAND_BACK: [], channel.GATHERED: []}
        self.moved = 0  # connections handed back
        self.flushing: asyncio.Future[None] | None = None

    def release(self, count: int) -> None:
        """The master asks for ``count`` connections that do not block (replacing any
        earlier ask)."""
        self.wanted = count
        self._asked()

    def gather(self, count: int) -> None:
        """The master asks for ``count`` connections that block (replacing any earlier
        ask), to gather them on fewer workers."""
        self.gathering = count
        self._asked()

    def _asked(self) -> None:
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
        self.wanted = self.gathering = 0
        self.draining = False
        self._hook()

    def _hook(self) -> None:
        """Look at each request's end only while there is something to hand back."""
        active = self.draining or self.wanted > 0 or self.gathering > 0
        self.hooks.after_response = self.after_response if active else None

    def _kind(self, protocol: Any) -> bytes | None:
        """The message this connection would go back in now (``B``, or ``G`` if it
        blocks), or None if it stays: not asked for, or not movable."""
        blocks = self.blocks
        if blocks is not None and protocol.transport in blocks.blocked:
            kind, asked = channel.GATHERED, self.gathering
        else:
            kind, asked = channel.HAND_BACK, self.wanted
        if not (self.draining or asked > 0) or not self.bridge.movable(protocol):
            return None
        return kind

    def _take(self, protocol: Any) -> None:
        """Detach the connection if it is to go back now, and send it."""
        kind = self._kind(protocol)
        fd = self.bridge.detach(protocol) if kind is not None else None
        if fd is None or kind is None:
            return
        self.moved += 1
        if not self.draining:
            if kind == channel.GATHERED:
                self.gathering -= 1
            else:
                self.wanted -= 1
        self.queues[kind].append(fd)

    def sweep(self) -> None:
        """Hand back every movable connection, up to what is asked."""
        for protocol in self.bridge.connections():
            if not (self.draining or self.wanted > 0 or self.gathering > 0):
                break
            self._take(protocol)
        self._hook()
        self._send()

    def after_response(self, send: Any) -> None:
        """A request on this connection just ended: move it if it is movable now."""
        if not self.draining and self.bridge.loop.time() > self.until:
            self.wanted = self.gathering = 0  # the asks expired
            self._hook()
            return
        transport = connection_of(send)
        if transport is None:
            return
        self._take(transport.get_protocol())  # type: ignore[attr-defined]
        self._hook()
        self._send()

    def _send(self) -> None:
        for kind, queue in self.queues.items():
            while queue:
                batch = queue[: channel.MAX_FDS]
                try:
                    channel.hand_back(self.chan, batch, kind)
                except BlockingIOError:
                    self._wait_writable()
                    return
                except OSError as exc:  # the master is gone: nobody can take them
                    logging.getLogger("uvicorn.error").warning(
                        "could not hand %d connection(s) back: %s; closing them",
                        len(queue), exc)
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
