"""The CLI's side of the control socket: send a request, start the daemon if needed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from pmx import wire
from pmx.daemon.paths import Home
from pmx.errors import PmxError
from pmx.files import open_private


class DaemonNotRunning(PmxError):
    pass


def request(home: Home, verb: str, args: dict[str, Any] | None = None,
            timeout: float = 120.0, clean_stale: bool = True) -> Any:
    """Send one request; return its result. Raises DaemonNotRunning, or the error the
    daemon reported, as the class it was raised as (BootError, ConfigError, PmxError...).

    A socket file that refuses connections is removed as stale (``clean_stale``),
    except while waiting for a daemon that is starting: it binds its socket before it
    listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(home.sock))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        if isinstance(exc, ConnectionRefusedError) and clean_stale:
            remove_stale(home)  # the socket file outlived its daemon
        raise DaemonNotRunning(f"no pmx daemon is running for {home.root}.") from None
    try:
        sock.sendall(json.dumps({"verb": verb, "args": args or {}}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise PmxError(f"the daemon did not answer '{verb}' within {timeout:g} s.") from None
    finally:
        sock.close()
    if not data:
        raise PmxError(f"the daemon closed the connection during '{verb}'.")
    try:
        response = json.loads(data)
    except ValueError:
        raise PmxError(f"the daemon's answer to '{verb}' is not JSON: {data[:80]!r}.") from None
    return wire.result(response)


def remove_stale(home: Home) -> None:
    for stale in (home.sock, home.pid):
        try:
            stale.unlink()
        except FileNotFoundError:
            pass


def daemon_pid(home: Home) -> int | None:
    """The pid of the running daemon, or None (and stale files are removed)."""
    try:
        return int(request(home, "ping", timeout=5)["pid"])
    except DaemonNotRunning:
        remove_stale(home)
        return None


def ensure_daemon(home: Home, timeout: float = 10.0) -> int:
    """Start the daemon in the background unless it runs; return its pid."""
    pid = daemon_pid(home)
    if pid is not None:
        return pid
    home.create()
    with open_private(home.daemon_log, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "pmx.daemon"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True, close_fds=True, cwd="/",
            env={**os.environ, "PMX_HOME": str(home.root)},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(request(home, "ping", timeout=5, clean_stale=False)["pid"])
        except DaemonNotRunning:
            time.sleep(0.02)
    raise PmxError(f"the pmx daemon did not start; see {home.daemon_log}.")
