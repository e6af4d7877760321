"""The master <-> worker channel: message framing over a unix socket pair.

Each worker has one socket pair with its master. On Linux it is ``SOCK_SEQPACKET``
(message boundaries kept, and a clean EOF when the other side goes away); elsewhere
``SOCK_DGRAM``. Every message is one datagram whose first byte is its kind:

master -> worker
    ``H`` + frame  hello: the worker id and the app config (the first message), as
                   pmx.wire frames, one per message (the config has no size limit)
    ``F`` + u16    N connection fds in SCM_RIGHTS ancillary data. N says how many were
                   sent: the kernel drops the fds a worker at its limit cannot take,
                   and the worker counts them lost
    ``S`` [+ u8]   stop: no fd follows; serve what you hold, then exit. With a 1 byte,
                   hand kept-alive connections back (``B``) as each turns idle instead
                   of closing them (a drain with rebalancing); plain ``S`` closes them
    ``L`` + u16    release: hand back up to N idle kept-alive connections (``B``), none
                   of those that block
    ``K`` + u16    gather: hand back up to N idle connections that block (``G``)
    ``P`` + u64    health probe number N

worker -> master
    ``R`` + JSON   ready: app imported and lifespan startup complete (``pid``, and
                   ``threads``: its app's thread pool, 0: none; pmx.worker.pool)
    ``E`` + JSON   boot error: message and traceback, sent before exiting
    ``Q`` + u64 + u8  probe N's answer: 1 healthy, 0 not. Without a health path the
                   event loop answers at once (it is not blocked); with one, the answer
                   is a GET of that path through the app (2xx/3xx is healthy)
    ``M`` + JSON   request metrics (pmx.worker.metrics), once a second: responses by
                   status class and cumulative counts of durations up to each of BUCKETS
    ``D``          leaving: the worker was told to stop (SIGTERM); the master takes it
                   out of rotation and answers ``S`` once no fd can follow
    ``B`` + u16    hand-back: N idle kept-alive connection fds in SCM_RIGHTS, detached
                   at a request boundary (pmx.worker.handback); the master hands them
                   to workers in rotation as it hands accepted connections
    ``G`` + u16    the same for connections that block: the master gathers them on
                   fewer workers (pmx.master.rebalance)

Because a socket pair delivers in order, ``S`` arriving after the last ``F`` is what
guarantees that no handed-off connection is left unread when a worker stops.
"""

from __future__ import annotations

import array
import json
import select
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from typing import Any

from pmx import wire

# A worker's exit code when the app cannot start (import error, lifespan failure):
# the master does not retry it in a loop.
BOOT_ERROR = 3

HELLO = b"H"
FDS = b"F"
STOP = b"S"
READY = b"R"
ERROR = b"E"
LEAVING = b"D"
METRICS = b"M"
PROBE = b"P"
PROBE_REPLY = b"Q"
RELEASE = b"L"
HAND_BACK = b"B"
GATHER = b"K"
GATHERED = b"G"
STOP_HANDING_BACK = STOP + b"\x01"

# Upper bounds (seconds) of the request-duration histogram in ``M`` messages.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_COUNT = struct.Struct("!H")
MAX_MESSAGE = 256 * 1024
# What the master sends after the hello is at most 9 bytes; a worker reads with a small
# buffer (a 256 KiB one per read is a large allocation on its per-connection path).
MAX_FROM_MASTER = 64
MAX_FDS = 253  # SCM_MAX_FD on Linux
_FDS_HEADERS = [[FDS + _COUNT.pack(n)] for n in range(MAX_FDS + 1)]
# The fds of a message as SCM_RIGHTS data, by count: no format string built per send.
_PACK_FDS = [struct.Struct(f"{n}i").pack for n in range(MAX_FDS + 1)]
_BACK_HEADERS = {kind: [[kind + _COUNT.pack(n)] for n in range(MAX_FDS + 1)]
                 for kind in (HAND_BACK, GATHERED)}
_FDS_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)
_PROBE = struct.Struct("!Q")
_REPLY = struct.Struct("!QB")


def socketpair() -> tuple[socket.socket, socket.socket]:
    kind = socket.SOCK_SEQPACKET if sys.platform.startswith("linux") else socket.SOCK_DGRAM
    return socket.socketpair(socket.AF_UNIX, kind)


def encode_json(kind: bytes, payload: dict[str, Any]) -> bytes:
    return kind + json.dumps(payload).encode()


def decode_json(message: bytes) -> dict[str, Any]:
    data = json.loads(message[1:].decode())
    if not isinstance(data, dict):
        raise ValueError("channel message is not a JSON object")
    return data


def send_hello(sock: socket.socket, hello: dict[str, Any]) -> None:
    """The master's first message, on the blocking channel: ``H`` + each wire frame."""
    for frame in wire.frames(hello):
        sock.send(HELLO + frame)


def recv_hello(sock: socket.socket) -> dict[str, Any]:
    """The worker's read of the hello. Raises ValueError if something else comes, or
    EOFError if the master is gone."""
    inbox = wire.Inbox()
    while True:
        message, _fds = recv(sock)
        if not message:
            raise EOFError("the master closed the channel")
        if message[:1] != HELLO:
            raise ValueError(f"expected a hello from the master, not {message[:20]!r}")
        hello = inbox.feed(message[1:])
        if hello is not None:
            return hello


def encode_probe(number: int) -> bytes:
    return PROBE + _PROBE.pack(number)


def decode_probe(message: bytes) -> int:
    return int(_PROBE.unpack(message[1 : 1 + _PROBE.size])[0])


def encode_probe_reply(number: int, healthy: bool) -> bytes:
    return PROBE_REPLY + _REPLY.pack(number, 1 if healthy else 0)


def decode_probe_reply(message: bytes) -> tuple[int, bool]:
    number, healthy = _REPLY.unpack(message[1 : 1 + _REPLY.size])
    return int(number), bool(healthy)


_SCM = (socket.SOL_SOCKET, socket.SCM_RIGHTS)


def send_fds(sock: socket.socket, fds: list[int]) -> None:
    """Send up to MAX_FDS descriptors in one message. Raises OSError (EAGAIN...).
    (socket.send_fds, without its per-call array building: this is the hot path.)"""
    sock.sendmsg(_FDS_HEADERS[len(fds)], [(*_SCM, _PACK_FDS[len(fds)](*fds))])


def hand_back(sock: socket.socket, fds: list[int], kind: bytes = HAND_BACK) -> None:
    """Send up to MAX_FDS detached connection fds to the master, in a ``B`` message (or
    ``G`` for connections that block). Raises OSError."""
    sock.sendmsg(_BACK_HEADERS[kind][len(fds)], [(*_SCM, _PACK_FDS[len(fds)](*fds))])


def encode_release(count: int, kind: bytes = RELEASE) -> bytes:
    """``L`` N (release N connections) or ``K`` N (hand back N that block)."""
    return kind + _COUNT.pack(min(count, 0xFFFF))


def decode_release(message: bytes) -> int:
    """N of an ``L`` or ``K`` message."""
    return int(_COUNT.unpack_from(message, 1)[0])


def fds_sent(message: bytes) -> int:
    """How many fds an ``F``, ``B`` or ``G`` message carried when it was sent."""
    return int(_COUNT.unpack_from(message, 1)[0])


def pending(sock: socket.socket, size: int = MAX_MESSAGE,
            queued: Callable[[int], list[Any]] | None = None,
            ) -> Iterator[tuple[bytes, list[int]]]:
    """Every message queued on a non-blocking channel end, read with a ``size`` buffer.
    A final ``(b"", [])`` means the peer is gone (EOF or error).

    ``queued``, a ``select.poll().poll`` watching ``sock``, says whether another message
    waits: a zero-timeout poll takes well under a microsecond, the ``recvmsg`` that
    fails with EAGAIN to say so about 3 µs (the exception). For a hot channel."""
    while True:
        try:
            message, fds = recv(sock, size)
        except BlockingIOError:
            return
        except OSError:
            message, fds = b"", []
        yield message, fds
        if not message or (queued is not None and not queued(0)):
            return


def poller(sock: socket.socket) -> Callable[[int], list[Any]]:
    """A ``queued`` for ``pending``: whether ``sock`` is readable."""
    poll = select.poll()
    poll.register(sock.fileno(), select.POLLIN)
    return poll.poll


def recv(sock: socket.socket, size: int = MAX_MESSAGE) -> tuple[bytes, list[int]]:
    """One message and the fds that came with it. ``b""`` means the peer is gone."""
    message, ancillary, _flags, _addr = sock.recvmsg(size, _FDS_SPACE)
    fds: list[int] = []
    for level, kind, data in ancillary:
        if (level, kind) == _SCM:
            fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
    return message, fds
