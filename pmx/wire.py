"""What the control wires carry: requests, replies, events and typed errors.

pmx has two control wires, both JSON objects:

CLI -> daemon (``$PMX_HOME/pmx.sock``, one request per connection, one JSON line each way)
    ``{"verb": V, "args": {...}}``, answered by a reply.
daemon <-> master (a SEQPACKET socket pair, see ``pmx.channel.socketpair``)
    the daemon's first message ``{"config": {...}}``; requests ``{"id": N, "op": OP,
    ...}``, each answered by a reply with the same ``id``; and the master's unsolicited
    events ``{"event": "ready" | "scaled" | "errored" | "failed", ...}``.

A reply is ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ERROR}``, and an
ERROR is ``{"kind": K, "message": M, "detail": D, "key": KEY}``: K names the exception
class it was raised as (``PmxError`` or one of its subclasses in ``pmx.errors``), so
the receiving side raises the same class with the same message, detail (a worker's
traceback) and, for a ``ConfigError``, the setting's key. A failed boot in a master
thus reaches the CLI as a ``BootError`` with its traceback. Any other exception is a bug
and travels as kind ``PmxError`` with its type and message.

Size: a CLI request may be up to 64 MiB (the daemon's limit, far above any a user could
write by accident), a reply any size. On the SEQPACKET pair a message is sent as frames
of at most ``FRAME`` bytes (a datagram cannot exceed the socket's buffer, about 200
KiB): each frame's first byte is ``+`` if more of the message follows and ``.`` if it
is the last. ``Outbox`` queues frames the socket cannot take at once and sends them when
it can, so a message is never cut short nor interleaved with another.
"""

from __future__ import annotations

import json
import socket
from collections import deque
from typing import Any

from pmx.errors import AppErrored, BindError, BootError, ConfigError, PmxError

FRAME = 32 * 1024
_MORE, _LAST = b"+", b"."
_KINDS: dict[str, type[PmxError]] = {
    cls.__name__: cls for cls in (PmxError, ConfigError, BindError, BootError, AppErrored)
}


# ------------------------------------------------------------------ errors


def error(exc: BaseException) -> dict[str, str]:
    """``exc`` as an ERROR: its kind (the nearest class pmx knows), message and detail."""
    if not isinstance(exc, PmxError):
        return {"kind": "PmxError", "message": f"{type(exc).__name__}: {exc}", "detail": ""}
    kind = next(c.__name__ for c in type(exc).__mro__ if c.__name__ in _KINDS)
    data = {"kind": kind, "message": getattr(exc, "message", None) or str(exc),
            "detail": str(getattr(exc, "detail", "") or "")}
    if isinstance(exc, ConfigError):
        data["key"] = exc.key
    return data


def failure(exc: BaseException) -> dict[str, Any]:
    """The reply that reports ``exc``."""
    return {"ok": False, "error": error(exc)}


def exception(data: Any) -> PmxError:
    """The exception an ERROR stands for. A bare string (an older peer) is a PmxError."""
    if not isinstance(data, dict):
        return PmxError(str(data or "unknown error"))
    cls = _KINDS.get(str(data.get("kind")), PmxError)
    message = str(data.get("message") or "unknown error")
    if cls is ConfigError:
        return ConfigError(str(data.get("key") or ""), message)
    if cls is BootError:
        return BootError(message, str(data.get("detail") or ""))
    return cls(message)


def result(reply: dict[str, Any]) -> Any:
    """A reply's result; raises the exception of a failed one."""
    if reply.get("ok"):
        return reply.get("result")
    raise exception(reply.get("error"))


# ------------------------------------------------------------------ framing


def frames(message: dict[str, Any]) -> list[bytes]:
    """``message`` as the datagrams that carry it on a SEQPACKET pair."""
    data = json.dumps(message).encode()
    chunks = [data[i : i + FRAME] for i in range(0, len(data), FRAME)] or [b""]
    return [_MORE + c for c in chunks[:-1]] + [_LAST + chunks[-1]]


class Inbox:
    """Rebuilds messages from frames, in order."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def feed(self, frame: bytes) -> dict[str, Any] | None:
        """The message ``frame`` completes, or None. Raises ValueError on a bad frame."""
        mark, chunk = frame[:1], frame[1:]
        if mark == _MORE:
            self._parts.append(chunk)
            return None
        if mark != _LAST:
            raise ValueError(f"not a control frame: {frame[:20]!r}")
        data = b"".join([*self._parts, chunk])
        self._parts.clear()
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ValueError(f"not a JSON object: {data[:40]!r}")
        return message


def send_blocking(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send every frame of ``message`` on a blocking socket."""
    for frame in frames(message):
        sock.send(frame)


def recv_blocking(sock: socket.socket, size: int = FRAME + 1) -> dict[str, Any]:
    """One whole message from a blocking socket. Raises EOFError if the peer is gone."""
    inbox = Inbox()
    while True:
        frame = sock.recv(size)
        if not frame:
            raise EOFError("the peer closed the control channel")
        message = inbox.feed(frame)
        if message is not None:
            return message


class Outbox:
    """Sends messages on a non-blocking SEQPACKET socket from an event loop: frames the
    socket cannot take now wait, in order, until it is writable. Once the peer is gone
    (any error but EAGAIN) nothing more is sent: its EOF tells the reader."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._queue: deque[bytes] = deque()
        self._waiting = False
        self._broken = False

    def put(self, message: dict[str, Any]) -> None:
        if self._broken:
            return
        self._queue.extend(frames(message))
        if not self._waiting:
            self._flush()

    def _flush(self) -> None:
        queue = self._queue
        while queue:
            try:
                self.sock.send(queue[0])
            except BlockingIOError:
                if not self._waiting:
                    import asyncio  # here: the CLI's client imports this module too

                    asyncio.get_running_loop().add_writer(self.sock.fileno(), self._flush)
                    self._waiting = True
                return
            except OSError:
                self._broken = True
                queue.clear()
                break
            queue.popleft()
        self.close()

    def close(self) -> None:
        """Stop waiting for the socket to be writable (it is about to be closed)."""
        if self._waiting:
            self._waiting = False
            import asyncio

            try:
                asyncio.get_running_loop().remove_writer(self.sock.fileno())
            except (RuntimeError, ValueError):
                pass
