"""A limit on the size of a request head (request line and headers).

uvicorn's httptools protocol has none: a client could send headers without end and the
parser would keep them all in memory. ``head_limited`` wraps an HTTP protocol class so
that a connection whose head grows past the limit is answered ``431 Request Header
Fields Too Large`` and closed, as gunicorn bounds its request lines (8,190 bytes each)
and nginx its header buffers.

What is counted: every byte received while no request body is arriving, that is from
the end of one request's head to the end of the next. A head that completes resets the
count; bytes of a body are never counted, so uploads of any size pass, and a kept-alive
connection may carry any number of requests. A chunk that would carry the count past
the limit is parsed in two parts: the bytes up to the limit, then (only if a head
completed within them) the rest, so the limit is exact whatever the size of a read. A
WebSocket upgrade swaps the transport's protocol, and its frames are not counted.

The connection is closed in stages, as nginx's ``lingering_close`` does: the client
is likely still sending its head, and a close with unread data makes the kernel send a
reset that can destroy the answer before the client reads it.
"""

from __future__ import annotations

from typing import Any

LINGER = 2.0  # seconds a refused connection is still read, at most, before it is closed
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\n"
    b"connection: close\r\n\r\n"
    b"Request header fields too large.\n"
)


def head_limited(protocol_class: type[Any], limit: int) -> type[Any]:
    """A subclass of uvicorn's ``protocol_class`` that closes heads over ``limit`` bytes."""

    class HeadLimited(protocol_class):  # type: ignore[misc, valid-type]
        _head = 0  # bytes received since the last head completed
        _refused = False  # answered (431, 408): what comes now is read and dropped

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            cycle = self.cycle
            if cycle is not None and cycle.more_body:  # a request body: not counted
                super().data_received(data)
                return
            room = limit - self._head
            if len(data) <= room:
                self._head += len(data)
                super().data_received(data)
                if self.cycle is not cycle:  # a head completed
                    self._head = 0
                return
            # This chunk passes the limit: a head must end within its first `room` bytes.
            if room > 0:
                super().data_received(data[:room])
            transport = self.transport
            if transport.is_closing() or transport.get_protocol() is not self:
                return  # a parse error answered, or upgraded to a WebSocket
            if self.cycle is cycle:
                linger_close(self, _TOO_LARGE)
                return
            self._head = 0
            self.data_received(data[room:])  # a body, or the next head

    HeadLimited.__name__ = HeadLimited.__qualname__ = f"HeadLimited{protocol_class.__name__}"
    return HeadLimited


def linger_close(protocol: Any, answer: bytes) -> None:
    """Answer on ``protocol``'s connection and close it in stages (a "lingering close",
    RFC 9112 9.6): this side is shut down once the answer is out, and the connection is
    closed LINGER seconds later. Closing at once, with a head still arriving, would
    make the kernel answer the client's next bytes with a reset, which can destroy the
    answer before the client has read it. A ``head_limited`` protocol reads what the
    client still sends and drops it; another one stops reading (what comes meanwhile
    waits in the kernel, and the close, seconds after the answer, may still reset)."""
    transport = protocol.transport
    if not hasattr(protocol, "_refused"):  # not head_limited: it would parse what comes
        transport.pause_reading()
    protocol._refused = True  # answered: not to be answered again
    transport.write(answer)
    if transport.can_write_eof():
        transport.write_eof()
    protocol.loop.call_later(LINGER, transport.close)
