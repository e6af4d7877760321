"""Create the listening socket the master accepts on."""

from __future__ import annotations

import errno
import os
import socket
import stat

from pmx.config import BindAddress
from pmx.errors import BindError


def listen(address: BindAddress, backlog: int = 2048) -> socket.socket:
    """A non-blocking listening socket bound to ``address``. Raises BindError."""
    try:
        if address.is_unix:
            sock = _unix(address.path)
        else:
            sock = _tcp(address.host, address.port)
        sock.listen(backlog)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise BindError(f"cannot listen on {address}: address already in use.") from None
        reason = exc.strerror or str(exc)
        raise BindError(f"cannot listen on {address}: {reason[:1].lower() + reason[1:]}.") from None
    sock.setblocking(False)
    return sock


def _tcp(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


def _unix(path: str) -> socket.socket:
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise OSError(errno.EEXIST, "a file that is not a socket is in the way")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # stale: nobody listens there any more
        else:
            raise OSError(errno.EADDRINUSE, "address already in use")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    return sock


def bound_address(sock: socket.socket, address: BindAddress) -> BindAddress:
    """``address`` with the real port filled in (for port 0)."""
    if address.is_unix:
        return address
    return BindAddress(host=address.host, port=sock.getsockname()[1])
