"""The daemon process: a unix control socket, one ManagedApp per app.

Protocol (pmx.wire): the CLI connects to ``$PMX_HOME/pmx.sock`` (mode 0600), writes one
JSON line ``{"verb": ..., "args": {...}}`` and reads one JSON line back: ``{"ok": true,
"result": ...}`` or ``{"ok": false, "error": {"kind": ..., "message": ..., "detail":
...}}``. One request per connection.
Each verb has one handler in ``pmx.daemon.handlers``: ``validate`` (pure, raises
PmxError) then ``execute``.

Only one daemon runs per PMX_HOME: it holds an exclusive lock on ``daemon.lock`` for its
whole life. SIGTERM/SIGINT stop every app gracefully, then the daemon.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import sys
from typing import Any

from setproctitle import setproctitle

from pmx import aio, wire
from pmx.daemon.apps import ManagedApp
from pmx.daemon.handlers import HANDLERS
from pmx.daemon.paths import Home
from pmx.errors import PmxError
from pmx.files import open_private

REQUEST_LIMIT = 64 << 20  # bytes in one control request

log = logging.getLogger("pmx.daemon")


class Daemon:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.apps: dict[str, ManagedApp] = {}
        self.stopping = asyncio.Event()

    async def serve(self, resurrect: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if self.home.sock.exists():
            self.home.sock.unlink()
        old_umask = os.umask(0o077)
        try:
            # A request is one line; the limit is far above any a user could write by
            # accident (--env values, a config file's apps).
            server = await asyncio.start_unix_server(
                self._on_client, path=str(self.home.sock), limit=REQUEST_LIMIT)
        finally:
            os.umask(old_umask)
        os.chmod(self.home.sock, 0o600)
        self.home.pid.write_text(f"{os.getpid()}\n")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # survive a closed terminal
        log.info("daemon %d listening on %s", os.getpid(), self.home.sock)
        try:
            if resurrect:
                try:
                    await HANDLERS["resurrect"].execute(self, {})
                except PmxError as exc:  # at boot: log it and serve what did start
                    log.error("resurrect: %s", exc)
            await self.stopping.wait()
        finally:
            server.close()
            await self.stop_all()
            for path in (self.home.sock, self.home.pid):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
            log.info("daemon stopped")

    async def stop_all(self) -> None:
        await asyncio.gather(*(app.stop() for app in self.apps.values()))
        for app in self.apps.values():
            app.close_logs()
        self.apps.clear()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            response = await self.dispatch(line)
            writer.write(json.dumps(response).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            verb = request["verb"]
            args = request.get("args") or {}
        except (ValueError, KeyError, TypeError):
            return wire.failure(PmxError(f"malformed request: {line[:80]!r}."))
        handler = HANDLERS.get(verb)
        if handler is None:
            return wire.failure(PmxError(f"unknown verb '{verb}'."))
        try:
            checked = handler.validate(self, args)
            return {"ok": True, "result": await handler.execute(self, checked)}
        except PmxError as exc:
            return wire.failure(exc)
        except Exception as exc:  # a bug: keep the daemon up, tell the user
            log.exception("error handling %s", verb)
            return wire.failure(PmxError(
                f"internal error in the daemon: {type(exc).__name__}: {exc}"))


def run(home: Home, resurrect: bool = False) -> None:
    """Run the daemon in this process until SIGTERM. Exits if one already runs."""
    home.create()
    lock = open_private(home.lock, "a")  # held for the daemon's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"pmx: a daemon is already running for {home.root}")
    setproctitle("pmx: daemon")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [daemon] %(levelname)s: %(message)s"))
    logger = logging.getLogger("pmx")
    logger.handlers[:] = [handler]
    logger.setLevel("INFO")
    aio.run(Daemon(home).serve(resurrect))
