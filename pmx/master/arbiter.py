"""The master of one app: supervise workers, dispatch connections, stop.

Design. One asyncio loop does everything; nothing blocks it. Four kinds of input reach
it: the listening socket (``Dispatcher``), each worker's channel (ready / load / error /
leaving, ``_on_message``), the daemon's control channel when there is one
(``pmx.master.control``), and *events* on ``self.events``: signals (their handlers only
enqueue), process exits (pidfds), respawn timers and a periodic tick. ``_handle`` is the
one place that acts on events.

Invariants:

- Only READY workers are in the dispatcher's rotation; a worker leaves the rotation
  *before* it is sent STOP, and STOP is the last message it gets, so every connection
  handed to it is in its channel ahead of the STOP and will be served.
- The app wants ``config.workers`` workers. A *slot* is a worker id; the workers filling
  slots are the live ones not draining, plus slots waiting for a respawn timer.
  ``scale`` changes the wanted count: new slots take the lowest free ids, removed slots
  are the highest ids and their workers are drained, not killed.
- Exits of workers that were not told to stop are failures: the slot is respawned after
  a backoff, unless the app is stopping, never came up (boot error: abort), or has failed
  to boot ``max_boot_failures`` times in a row (errored: stop respawning).
- When ``serve`` returns or raises, no worker process is left running.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from setproctitle import setproctitle

from pmx import channel
from pmx.config import AppConfig, parse_bind
from pmx.errors import AppErrored, BootError, PmxError
from pmx.limits import raise_fd_limit
from pmx.master.backoff import Backoff
from pmx.master.balancer import make_policy
from pmx.master.dispatch import Dispatcher
from pmx.master.health import Health
from pmx.master.listener import bound_address, listen
from pmx.master.rebalance import Rebalancer
from pmx.master.workers import Worker, WorkerState, describe_exit, launch

log = logging.getLogger("pmx.master")

HISTORY = 50  # restart records kept for `pmx describe`
# Without pidfds (macOS) exits are found by polling on every tick.
_HAS_PIDFD = hasattr(os, "pidfd_open") and sys.platform.startswith("linux")


class AppState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    ERRORED = "errored"  # gave up respawning after repeated boot failures
    STOPPING = "stopping"
    STOPPED = "stopped"


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved here; reload() has logged the failure


class Master:
    def __init__(
        self,
        config: AppConfig,
        listener: socket.socket | None = None,
        clock: Callable[[], float] = time.monotonic,
        log_prefix: bool = False,
    ) -> None:
        self.config = config
        self.clock = clock
        self.listener = listener
        self.owns_listener = listener is None
        self.log_prefix = log_prefix  # workers prefix their output lines with their id
        self.address = config.bind_address
        self.policy = make_policy(config.balance)
        self.state = AppState.STARTING
        self.live: list[Worker] = []
        self.backoffs: dict[int, Backoff] = {}
        self.respawns: dict[int, asyncio.TimerHandle] = {}
        self.restarts: dict[int, int] = {}
        self.restart_reasons: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []
        self.boot_failures = 0
        self.errored_because = ""  # why the app errored (the last boot error)
        self.ever_ready = False
        self.replacing: set[int] = set()  # slots whose worker is being replaced
        self.reloading = False
        self.announced = False
        self.failure: PmxError | None = None
        self.stop_deadline = 0.0
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.tick_interval = 1.0 if _HAS_PIDFD else 0.2
        self.admin_address = ""
        self.on_event: Callable[[str, dict[str, Any]], None] = lambda kind, data: None

    # ----------------------------------------------------------------- main loop

    async def serve(self) -> None:
        """Run until stopped. Raises BootError / AppErrored / BindError."""
        loop = asyncio.get_running_loop()
        raise_fd_limit()
        self.events = asyncio.Queue()
        if self.listener is None:
            self.listener = listen(self.address, self.config.backlog)
        self.listener.setblocking(False)
        self.address = bound_address(self.listener, self.address)
        self.dispatch = Dispatcher(self.listener, self.policy)
        self.rebalance = Rebalancer(self.dispatch, self.config.rebalance)
        setproctitle(f"pmx: master {self.config.name} {self.address}")
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
        for sig in handled:
            loop.add_signal_handler(sig, self.events.put_nowait, ("signal", sig))
        try:
            log.info(
                "starting %s: %d worker(s) of %s on %s (%s; master pid %d)",
                self.config.name, self.config.workers, self.config.app,
                self._url(), self.policy.name, os.getpid(),
            )
            if self.config.admin:
                from pmx.master.admin import Admin

                admin = Admin(self)
                where = parse_bind(self.config.admin)
                self.admin_address = await admin.start(where.host, where.port)
            for worker_id in range(1, self.config.workers + 1):
                self.spawn(worker_id)
            from pmx.master.supervise import supervise

            supervisor = loop.create_task(supervise(self))
            if self.config.watch:
                from pmx.master.watch import watch

                watcher = loop.create_task(watch(self))
            while self.state is not AppState.STOPPED:
                timeout = 0.05 if self.state is AppState.STOPPING else self.tick_interval
                try:
                    event = await asyncio.wait_for(self.events.get(), timeout)
                except asyncio.TimeoutError:
                    event = ("tick",)
                self._handle(event)
        finally:
            # Cancelled and awaited: a task left pending (a replacement under way when
            # the stop came) would be destroyed with the loop, half done.
            tasks = [t for t in (locals().get("supervisor"), locals().get("watcher")) if t]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if "admin" in locals():
                admin.close()
            for sig in handled:
                loop.remove_signal_handler(sig)
            self.dispatch.close()
            self.rebalance.close()
            self._kill_all()
            if self.owns_listener:
                self.listener.close()
                if self.address.is_unix and os.path.exists(self.address.path):
                    os.unlink(self.address.path)
        if self.failure is not None:
            raise self.failure

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "signal":
            self._handle_signal(event[1])
        elif kind == "spawn":
            self.respawns.pop(event[1], None)
            if self.state in (AppState.STARTING, AppState.RUNNING) and self.slot_free(event[1]):
                self.spawn(event[1])
        self.reap()
        if self.state is AppState.STOPPING:
            self._check_stop()

    def _handle_signal(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            self.start_reload()
            return
        if sig in (signal.SIGTTIN, signal.SIGTTOU):
            wanted = self.config.workers + (1 if sig == signal.SIGTTIN else -1)
            if wanted < 1:
                log.info("SIGTTOU ignored: %s already runs a single worker", self.config.name)
                return
            try:
                self.scale(wanted)
            except PmxError as exc:
                log.warning("%s ignored: %s", signal.Signals(sig).name, exc)
            return
        if self.state is AppState.STOPPING and sig == signal.SIGINT:
            log.warning("second SIGINT: stopping now, killing %d worker(s)", len(self.live))
            for worker in self.live:
                self._kill(worker)
            return
        self.begin_stop(signal.Signals(sig).name)

    # ------------------------------------------------------------------ workers

    def slot_free(self, worker_id: int) -> bool:
        """No worker holds slot ``worker_id`` (starting or ready) and none is being
        started to replace it: a respawn may fill it."""
        return worker_id not in self.replacing and not any(
            w.id == worker_id and w.state in (WorkerState.STARTING, WorkerState.READY)
            for w in self.live
        )

    def spawn(self, worker_id: int, replacement: bool = False) -> Worker:
        worker = launch(
            self.config, worker_id, self.clock(), replacement=replacement,
            log_prefix=self.log_prefix, live_load=self.policy.name != "round-robin",
            watch_blocks=self.policy.name == "least-busy",
        )
        self.live.append(worker)
        parent, process = worker.chan, worker.process
        loop = asyncio.get_running_loop()
        loop.add_reader(parent.fileno(), self._on_message, worker)
        if _HAS_PIDFD:
            # Readable when the process exits: reaping without SIGCHLD, which uvloop keeps.
            worker.pidfd = os.pidfd_open(process.pid)
            loop.add_reader(worker.pidfd, self.events.put_nowait, ("exit",))
        log.debug("worker #%d spawned (pid %d)", worker_id, process.pid)
        return worker

    def _on_message(self, worker: Worker) -> None:
        for message, fds in channel.pending(worker.chan):
            kind = message[:1]
            if kind == channel.HAND_BACK:
                self.rebalance.handed_back(worker, fds)
                continue
            for fd in fds:
                os.close(fd)
            if kind == channel.METRICS:
                worker.metrics = channel.decode_json(message)
            elif kind == channel.PROBE_REPLY:
                number, healthy = channel.decode_probe_reply(message)
                if number == worker.probe_number and worker.probe_sent_at is not None:
                    worker.probe_sent_at = None
                    self.record_probe(worker, healthy)
                    for waiter in worker.probe_waiters:
                        if not waiter.done():
                            waiter.set_result(healthy)
                    worker.probe_waiters.clear()
            elif kind == channel.READY:
                self._on_ready(worker)
            elif kind == channel.ERROR:
                worker.error = str(channel.decode_json(message).get("error", ""))
            elif kind == channel.LEAVING:
                self._on_leaving(worker)
            elif not message:
                asyncio.get_running_loop().remove_reader(worker.chan.fileno())
                self.events.put_nowait(("eof",))  # the exit follows; reap soon
                return

    def _on_ready(self, worker: Worker) -> None:
        if worker.state is not WorkerState.STARTING:
            self._send_stop(worker)
            return
        worker.ready_at = self.clock()
        worker.transition(WorkerState.READY)
        self.boot_failures = 0
        log.info(
            "worker #%d (pid %d) ready in %.2f s",
            worker.id, worker.pid, worker.ready_at - worker.started_at,
        )
        self.probe(worker)  # it gets traffic once this first probe passes

    def probe(self, worker: Worker) -> None:
        worker.probe_number += 1
        worker.probe_sent_at = worker.last_probe_at = self.clock()
        try:
            worker.chan.send(channel.encode_probe(worker.probe_number))
        except OSError:
            pass  # gone: reaping will tell; until then the probe times out

    def record_probe(self, worker: Worker, healthy: bool) -> None:
        if worker.state is not WorkerState.READY:
            return
        before = worker.health.state
        after = worker.health.record(healthy)
        if after is Health.OK and worker not in self.dispatch.rotation:
            if before is Health.FAILING:
                log.info("worker #%d (pid %d) is healthy again: back in rotation",
                         worker.id, worker.pid)
            self._admit(worker)
        elif after is Health.FAILING and before is not Health.FAILING:
            log.warning("worker #%d (pid %d) failed %d health checks in a row: out of rotation",
                        worker.id, worker.pid, worker.health.failures)
            self.dispatch.remove(worker)
            self._announce()  # a worker that never passed no longer holds up the start

    def _admit(self, worker: Worker) -> None:
        self.dispatch.add(worker)
        self.rebalance.joined(worker)
        if worker.ready_waiter is not None and not worker.ready_waiter.done():
            worker.ready_waiter.set_result(None)
        if not self.ever_ready:
            self.ever_ready = True
            self.state = AppState.RUNNING
            log.info("%s is serving on %s", self.config.name, self._url())
        self._announce()

    def _announce(self) -> None:
        """Tell the daemon the app is up once no initial worker is still starting."""
        if self.announced or not self.ever_ready:
            return
        if any(
            w.state is WorkerState.STARTING
            or w.state is WorkerState.READY and w.health.state is Health.PENDING
            for w in self.live
        ):
            return
        self.announced = True
        self.on_event("ready", {"bind": str(self.address)})

    def _on_leaving(self, worker: Worker) -> None:
        """The worker got SIGTERM from someone: drain it and start a replacement."""
        if worker.state is WorkerState.READY:
            log.info("worker #%d (pid %d) asked to stop; replacing it", worker.id, worker.pid)
            self.drain(worker)
            if self.state in (AppState.STARTING, AppState.RUNNING):
                self.record(worker, "signal", "SIGTERM")
                if self.slot_free(worker.id):  # else its replacement is starting already
                    self.spawn(worker.id)
        else:
            self._send_stop(worker)

    def drain(self, worker: Worker) -> None:
        """Out of rotation first, then STOP: no fd can follow the STOP."""
        self.dispatch.remove(worker)
        if worker.state is WorkerState.STARTING:
            worker.transition(WorkerState.DRAINING, "stop before ready")
            self._signal(worker, signal.SIGTERM)
            return
        worker.transition(WorkerState.DRAINING)
        worker.drain_deadline = self.clock() + self.config.graceful_timeout
        self._send_stop(worker)

    def _send_stop(self, worker: Worker) -> None:
        try:
            worker.chan.send(self.rebalance.stop_message())
        except OSError:
            pass  # it is gone already; reaping will tell

    def reap(self) -> None:
        for worker in list(self.live):
            code = worker.process.poll()
            if code is not None:
                self._on_exit(worker, code)

    def _on_exit(self, worker: Worker, code: int) -> None:
        worker.exit_code = code
        self.live.remove(worker)
        self.dispatch.remove(worker)
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.chan.fileno())
        self._on_message(worker)  # a last ERROR may still be queued
        worker.chan.close()
        if worker.slot is not None:
            worker.slot.close()
            worker.slot = None
        if worker.pidfd >= 0:
            loop.remove_reader(worker.pidfd)
            os.close(worker.pidfd)
            worker.pidfd = -1
        uptime = self.clock() - worker.started_at
        if worker.state is WorkerState.DRAINING:
            worker.transition(WorkerState.STOPPED)
            log.info("worker #%d (pid %d) stopped (%s)", worker.id, worker.pid, describe_exit(code))
            return
        was_ready = worker.ready_at is not None
        worker.transition(WorkerState.FAILED, describe_exit(code))
        if worker.replacement and not was_ready:
            # A reload's new worker failed: the reload reports it; the old one serves on.
            error = self._boot_error(worker, code)
            log.error("worker #%d (pid %d) failed to start: %s",
                      worker.id, worker.pid, error.message.partition("failed to start: ")[2])
            if worker.ready_waiter is not None and not worker.ready_waiter.done():
                worker.ready_waiter.set_exception(error)
            return
        if self.state is AppState.STOPPING:
            return
        if self.state is AppState.ERRORED:  # not respawning any more
            log.warning("worker #%d (pid %d) died (%s); app is errored, not restarting",
                        worker.id, worker.pid, describe_exit(code))
            if not self.live:  # the cause, not only the end of it
                self._fail(AppErrored(f'app "{self.config.name}" errored: '
                                      f"{self.errored_because or 'no worker left.'}"))
            return
        if not was_ready:
            self.boot_failures += 1
            if not self.ever_ready and (
                code == channel.BOOT_ERROR or self.boot_failures >= self.config.max_boot_failures
            ):
                self._fail(self._boot_error(worker, code))
                return
            if self.boot_failures >= self.config.max_boot_failures:
                self._give_up(worker, code)
                return
        self._announce()
        backoff = self.backoffs.setdefault(worker.id, Backoff())
        delay = backoff.on_exit(uptime)
        log.warning(
            "worker #%d (pid %d) died (%s) after %.1f s; restarting in %.1f s",
            worker.id, worker.pid, describe_exit(code), uptime, delay,
        )
        if worker.error:
            log.warning("worker #%d error: %s", worker.id, worker.error.strip())
        self.record(worker, "crash" if was_ready else "boot", describe_exit(code))
        if not self.slot_free(worker.id):
            log.info("worker #%d: its replacement is already starting", worker.id)
            return
        self.respawn_later(worker.id, delay)

    def respawn_later(self, worker_id: int, delay: float) -> None:
        """Fill slot ``worker_id`` after ``delay`` seconds, if it is still free then."""
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay, self.events.put_nowait, ("spawn", worker_id))
        self.respawns[worker_id] = handle

    def record(self, worker: Worker, reason: str, detail: str) -> None:
        self.restarts[worker.id] = self.restarts.get(worker.id, 0) + 1
        self.restart_reasons[reason] = self.restart_reasons.get(reason, 0) + 1
        self.history.append({
            "time": time.time(), "worker": worker.id, "pid": worker.pid,
            "reason": reason, "detail": detail,
            "error": (worker.error.strip().splitlines() or [""])[-1],
        })
        del self.history[:-HISTORY]

    def _boot_error(self, worker: Worker, code: int) -> BootError:
        error = worker.error.strip()
        if not error:
            return BootError(
                f'app "{self.config.app}" failed to start: '
                f"worker exited before it was ready ({describe_exit(code)})."
            )
        lines = error.splitlines()
        detail = "\n".join(lines[-12:]) if len(lines) > 1 else ""
        return BootError(f'app "{self.config.app}" failed to start: {lines[-1]}', detail)

    def _give_up(self, worker: Worker, code: int) -> None:
        self.state = AppState.ERRORED
        last = self._boot_error(worker, code)
        log.error(
            "%s errored: %d worker(s) in a row exited before becoming ready; "
            "not restarting (last: %s)",
            self.config.name, self.boot_failures, last.message,
        )
        self.on_event("errored", {"error": last.message, "detail": last.detail})
        reason = last.message.partition("failed to start: ")[2] or last.message
        self.errored_because = (f"{self.boot_failures} workers in a row exited before "
                                f"becoming ready; last error: {reason}")
        if not self.live:
            self._fail(AppErrored(f'app "{self.config.name}" errored: {self.errored_because}'))

    def _fail(self, error: PmxError) -> None:
        self.failure = error
        self.begin_stop("failure")

    # ------------------------------------------------------------------ reload

    def start_reload(self, parallel: int = 1) -> asyncio.Task[list[int]]:
        """Begin a rolling reload (pmx.master.reload) in the background."""
        from pmx.master.reload import reload

        task = asyncio.get_running_loop().create_task(reload(self, parallel))
        task.add_done_callback(_log_failure)
        return task

    # ------------------------------------------------------------------ scaling

    def scale(self, workers: int) -> None:
        """Grow or shrink to ``workers`` (pmx.master.scaling)."""
        from pmx.master.scaling import scale

        scale(self, workers)

    # ------------------------------------------------------------------ stopping

    def begin_stop(self, why: str) -> None:
        if self.state in (AppState.STOPPING, AppState.STOPPED):
            return
        self.state = AppState.STOPPING
        self.dispatch.close()
        if self.owns_listener:
            self.listener.close()  # type: ignore[union-attr]  # new connections are refused
        for handle in self.respawns.values():
            handle.cancel()
        self.respawns.clear()
        self.stop_deadline = self.clock() + self.config.graceful_timeout
        if why != "failure":
            log.info(
                "stopping %s (%s): waiting up to %g s for %d worker(s) to finish",
                self.config.name, why, self.config.graceful_timeout, len(self.live),
            )
        for worker in self.live:
            if worker.state in (WorkerState.READY, WorkerState.STARTING):
                self.drain(worker)
        self._check_stop()

    def _check_stop(self) -> None:
        if self.live and self.clock() >= self.stop_deadline:
            for worker in self.live:
                if worker.process.poll() is None:
                    log.warning(
                        "worker #%d (pid %d) still running %g s after the stop began "
                        "(graceful timeout); sending SIGKILL",
                        worker.id, worker.pid, self.config.graceful_timeout,
                    )
                    self._kill(worker)
            self.reap()
        if not self.live:
            self.state = AppState.STOPPED
            if self.failure is None:
                log.info("%s stopped", self.config.name)

    def _signal(self, worker: Worker, sig: int) -> None:
        try:
            worker.process.send_signal(sig)
        except ProcessLookupError:
            pass

    def _kill(self, worker: Worker) -> None:
        self._signal(worker, signal.SIGKILL)
        try:
            worker.process.wait(5)
        except subprocess.TimeoutExpired:
            log.error("worker #%d (pid %d) did not die after SIGKILL", worker.id, worker.pid)

    def _kill_all(self) -> None:
        for worker in list(self.live):
            if worker.process.poll() is None:
                self._kill(worker)
        self.live.clear()

    def _url(self) -> str:
        return str(self.address) if self.address.is_unix else f"http://{self.address}"
