"""One app under the daemon: its listening socket, its master process, its logs.

The daemon creates the listening socket and keeps it for as long as the app runs; the
master gets a copy. If the master dies, a new one is started on the same socket after a
backoff, and connections arriving meanwhile wait in the kernel backlog: none is refused.
A master that exits 1 after a ``failed`` event (boot error, errored) is not restarted:
the app is shown as errored with the master's error.

The master's stdout and stderr (and so every worker's) are pipes read here and written to
``NAME.out.log`` / ``NAME.err.log`` with a timestamp per line and size rotation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from pmx import channel, wire
from pmx.backoff import Backoff
from pmx.config import AppConfig
from pmx.daemon.paths import Home
from pmx.errors import PmxError
from pmx.listening import bound_address, listen
from pmx.logfiles import RotatingLog
from pmx.master.states import DAEMON_FLOW, AppState, Lifecycle

log = logging.getLogger("pmx.daemon")

CONTROL_TIMEOUT = 2.0


__all__ = ["AppState", "ManagedApp"]


class ManagedApp:
    def __init__(self, config: AppConfig, home: Home) -> None:
        self.config = config
        self.home = home
        self.lifecycle = Lifecycle(f"app {config.name}", DAEMON_FLOW, log, AppState.STOPPED)
        self.listener: socket.socket | None = None
        self.master: subprocess.Popen[bytes] | None = None
        self.control: socket.socket | None = None
        self.outbox: wire.Outbox | None = None  # the control socket's, one per master
        self.inbox = wire.Inbox()
        self.pidfd = -1
        self.restarts = 0
        self.error = ""
        self.detail = ""
        self.backoff = Backoff()
        self.master_started = 0.0
        self.started_event = asyncio.Event()
        self.exited_event = asyncio.Event()
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.failed = False
        self.restart_timer: asyncio.TimerHandle | None = None
        self.logs = [
            RotatingLog(str(home.out_log(config.name)), config.log_max_size, config.log_backups),
            RotatingLog(str(home.err_log(config.name)), config.log_max_size, config.log_backups),
        ]
        self.pipes: list[int] = []  # write ends, kept so orphaned output still lands

    @property
    def state(self) -> AppState:
        return self.lifecycle.state

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind and start the master. Raises BindError; readiness comes later."""
        self.listener = listen(self.config.bind_address, self.config.backlog)
        self.listener.set_inheritable(False)
        address = bound_address(self.listener, self.config.bind_address)
        self.config.bind = str(address)
        self.error = self.detail = ""
        self.failed = False
        self.lifecycle.to(AppState.STARTING)
        self.started_event = asyncio.Event()
        if not self.pipes:
            self._open_pipes()
        self._spawn_master()

    async def wait_started(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.started_event.wait(), timeout)
        except asyncio.TimeoutError:
            self.error = f"not ready after {timeout:g} s"

    def _open_pipes(self) -> None:
        loop = asyncio.get_running_loop()
        for writer in self.logs:
            read_end, write_end = os.pipe()
            os.set_blocking(read_end, False)
            loop.add_reader(read_end, self._on_output, read_end, writer)
            self.pipes.append(write_end)
            self.pipes.append(read_end)

    def _on_output(self, fd: int, writer: RotatingLog) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data:
            writer.write_lines(data)

    def _spawn_master(self) -> None:
        assert self.listener is not None
        ours, theirs = channel.socketpair()
        lfd, cfd = self.listener.fileno(), theirs.fileno()
        try:
            self.master = subprocess.Popen(
                [sys.executable, "-m", "pmx.master", str(lfd), str(cfd)],
                pass_fds=[lfd, cfd],
                stdin=subprocess.DEVNULL,
                stdout=self.pipes[0],
                stderr=self.pipes[2],
                env=self.config.child_env(),
            )
        finally:
            theirs.close()
        wire.send_blocking(ours, {"config": self.config.to_child()})
        ours.setblocking(False)
        self.control = ours
        self.outbox = wire.Outbox(ours)
        self.inbox = wire.Inbox()
        self.master_started = time.monotonic()
        self.exited_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(ours.fileno(), self._on_control)
        self.pidfd = os.pidfd_open(self.master.pid)
        loop.add_reader(self.pidfd, self._on_master_exit)

    def _on_control(self) -> None:
        assert self.control is not None
        for data, _fds in channel.pending(self.control):
            try:
                message = self.inbox.feed(data) if data else None
            except ValueError as exc:
                log.error("%s: a bad message from the master: %s", self.config.name, exc)
                data = b""
            if not data:
                asyncio.get_running_loop().remove_reader(self.control.fileno())
                return
            if message is None:
                continue  # more frames of the message follow
            event = message.get("event")
            if event == "ready":
                if self.state is AppState.STARTING:
                    self.lifecycle.to(AppState.RUNNING, "ready")
                self.started_event.set()
            elif event == "scaled":  # also after SIGTTIN/SIGTTOU sent to the master
                self.config.workers = int(message["workers"])
            elif event in ("failed", "errored"):
                self.failed = event == "failed"
                error = wire.exception(message.get("error"))
                self.error = str(error)
                self.detail = getattr(error, "detail", "") or str(message.get("detail") or "")
                if event == "errored" and self.state is not AppState.STOPPING:
                    self.lifecycle.to(AppState.ERRORED, "errored")
            elif "id" in message:
                future = self.pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)

    def _on_master_exit(self) -> None:
        assert self.master is not None
        loop = asyncio.get_running_loop()
        code = self.master.wait()
        loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = -1
        if self.control is not None:
            self._on_control()  # the last events may be queued behind the exit
            try:
                loop.remove_reader(self.control.fileno())
            except ValueError:
                pass
            if self.outbox is not None:
                self.outbox.close()
            self.control.close()
            self.control = None
        for future in self.pending.values():
            if not future.done():
                future.set_exception(PmxError(f"the master of {self.config.name} exited."))
        self.pending.clear()
        self.exited_event.set()
        if self.state is AppState.STOPPING:
            self._release()
            self.lifecycle.to(AppState.STOPPED, "master exited")
            return
        if self.failed or code == 1 and self.error:
            log.error("%s errored: %s", self.config.name, self.error)
            self._release()
            self.lifecycle.to(AppState.ERRORED, "master failed")
            self.started_event.set()
            return
        uptime = time.monotonic() - self.master_started
        delay = self.backoff.on_exit(uptime)
        self.restarts += 1
        log.warning(
            "master of %s (pid %d) died (exit %s); restarting in %.1f s",
            self.config.name, self.master.pid, code, delay,
        )
        self.restart_timer = loop.call_later(delay, self._restart_master)

    def _restart_master(self) -> None:
        self.restart_timer = None
        if self.state in (AppState.STARTING, AppState.RUNNING, AppState.ERRORED):
            self._spawn_master()

    async def stop(self) -> None:
        """Graceful stop of the master and its workers; then the port is released."""
        if self.restart_timer is not None:
            self.restart_timer.cancel()
            self.restart_timer = None
        if self.master is None or self.master.poll() is not None or self.pidfd < 0:
            self._release()
            self.lifecycle.to(AppState.STOPPED, "no master")
            return
        self.lifecycle.to(AppState.STOPPING)
        self.master.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.exited_event.wait(), self.config.graceful_timeout + 5)
        except asyncio.TimeoutError:
            log.warning("master of %s ignored SIGTERM; sending SIGKILL", self.config.name)
            self.master.kill()
            await self.exited_event.wait()

    def _release(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            address = self.config.bind_address
            if address.is_unix and os.path.exists(address.path):
                os.unlink(address.path)

    def close_logs(self) -> None:
        loop = asyncio.get_running_loop()
        for index, fd in enumerate(self.pipes):
            if index % 2:
                loop.remove_reader(fd)
            os.close(fd)
        self.pipes.clear()
        for writer in self.logs:
            writer.close()

    # ------------------------------------------------------------------ requests

    async def ask(self, op: str, timeout: float = CONTROL_TIMEOUT, **args: Any) -> Any:
        """A control request to the master; its result, or the error it raised (as
        its class: BootError with the traceback of a failed reload, PmxError...)."""
        if self.control is None or self.outbox is None or self.state is AppState.STOPPING:
            raise PmxError(f"app '{self.config.name}' is {self.state.value}.")
        self.next_id += 1
        request_id = self.next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        self.outbox.put({"id": request_id, "op": op, **args})
        try:
            reply = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise PmxError(f"the master of '{self.config.name}' did not answer.") from None
        finally:
            self.pending.pop(request_id, None)
        return wire.result(reply)

    async def status(self) -> dict[str, Any]:
        master: dict[str, Any] = {}
        if self.control is not None:
            try:
                master = await self.ask("status")
            except PmxError:
                master = {}
        return {
            "name": self.config.name,
            "app": self.config.app,
            "state": self.state.value,
            "bind": self.config.bind,
            "balance": self.config.balance,
            "balancing": master.get("balancing", ""),
            "workers_wanted": self.config.workers,
            "master_pid": self.master.pid if self.master and self.master.poll() is None else None,
            "restarts": self.restarts,
            "error": self.error,
            "admin": master.get("admin", ""),
            "connections_moved": master.get("connections_moved", 0),
            "workers": master.get("workers", []),
            "_master": master,
        }
