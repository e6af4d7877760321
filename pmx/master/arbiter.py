"""The master of one app: its state and its loop; the parts that act on it are wired here.

Design. One asyncio loop does everything; nothing blocks it. Four kinds of input reach
it: the listening socket (``Dispatcher``), each worker's channel (ready / load / error /
leaving, ``_on_message``), the daemon's control channel when there is one
(``pmx.master.control``), and *events* on ``self.events``: signals (their handlers only
enqueue), process exits (pidfds), respawn timers and a periodic tick. ``_handle`` is the
one place that acts on events.

The master holds the state: the app's ``Lifecycle`` (pmx.master.states), the live worker
processes, the slot table (pmx.master.slots) and the restart history. The parts are
handed the master as a narrow interface (pmx.master.roles) and import nothing of this
module: the ``Reloader`` (reloads and recycling), ``scaling.scale``, the ``Supervisor``
(probes, memory, recycling, overdue drains), ``watch``, the ``Admin`` endpoint and, from
``pmx.master.__main__``, the ``Control`` server. Workers are started by an injected
launcher (``pmx.master.workers.launch``; tests hand it fake workers) and timed by an
injected clock.

Invariants:

- Only READY workers are in the dispatcher's rotation; a worker leaves the rotation
  *before* it is sent STOP, and STOP is the last message it gets, so every connection
  handed to it is in its channel ahead of the STOP and will be served.
- The app wants ``config.workers`` workers, one per slot. Every worker is started through
  the slot table, which refuses a second worker for a slot (a replacement aside, which
  takes the slot over once it is ready). A drained worker holds no slot.
- Exits of workers that were not told to stop are failures: the slot is respawned after
  a backoff, unless the app is stopping, never came up (boot error: abort), or has failed
  to boot ``max_boot_failures`` times in a row (errored: stop respawning), or the slot's
  replacement is starting already.
- When ``serve`` returns or raises, no worker process is left running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from setproctitle import setproctitle

from pmx import channel, wire
from pmx.backoff import Backoff
from pmx.config import AppConfig, parse_bind
from pmx.cpus import usable_cpus
from pmx.errors import AppErrored, BootError, PmxError
from pmx.limits import raise_fd_limit
from pmx.listening import bound_address, listen
from pmx.master import scaling, status
from pmx.master.admin import Admin
from pmx.master.balancer import make_policy
from pmx.master.dispatch import Dispatcher
from pmx.master.health import Health
from pmx.master.history import History
from pmx.master.rebalance import Rebalancer
from pmx.master.reload import Reloader
from pmx.master.sampler import Sampler
from pmx.master.slots import Slots, SlotState
from pmx.master.states import MASTER_FLOW, AppState, Lifecycle
from pmx.master.supervise import Supervisor
from pmx.master.watch import watch
from pmx.master.workers import (
    HAS_PIDFD,
    Launcher,
    Worker,
    WorkerState,
    boot_error,
    describe_exit,
    launch,
)

log = logging.getLogger("pmx.master")

Subscriber = Callable[[str, dict[str, Any]], None]  # (event kind, data)


class Master:
    def __init__(
        self,
        config: AppConfig,
        listener: socket.socket | None = None,
        clock: Callable[[], float] = time.monotonic,
        log_prefix: bool = False,
        launcher: Launcher = launch,
        title: bool = True,
    ) -> None:
        self.config = config
        self.clock = clock
        self.launcher = launcher
        self.title = title  # set the process title (not when run inside a test)
        self.listener = listener
        self.owns_listener = listener is None
        self.log_prefix = log_prefix  # workers prefix their output lines with their id
        self.address = config.bind_address
        self.policy = make_policy(config.balance, usable_cpus(), config.workers)
        self.lifecycle = Lifecycle(f"app {config.name}", MASTER_FLOW, log)
        self.live: list[Worker] = []  # every worker process not reaped yet
        self.backoffs: dict[int, Backoff] = {}
        self.history = History()
        self.boot_failures = 0
        self.errored_because = ""  # why the app errored (the last boot error)
        self.announced = False  # the daemon was told the app is up (once per master)
        self.failure: PmxError | None = None
        self.stop_deadline = 0.0
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.tick_interval = 1.0 if HAS_PIDFD else 0.2
        self.admin_address = ""
        self._subscribers: list[Subscriber] = []
        # The parts, each handed the master as the narrow interface it needs.
        self.slots = Slots(self._start_worker)
        self.sampler = Sampler()
        self.reloader = Reloader(self)
        self.supervisor = Supervisor(self, self.reloader, self.sampler)

    @property
    def state(self) -> AppState:
        return self.lifecycle.state

    @property
    def policy_name(self) -> str:
        return self.policy.name

    @property
    def balancing(self) -> str:
        """What the policy does now (``auto`` names the one it acts as)."""
        return self.policy.describe()

    @property
    def connections_moved(self) -> int:
        """Kept-alive connections handed back and handed on, over the app's life."""
        return self.rebalance.moved

    def subscribe(self, subscriber: Subscriber) -> None:
        """Have ``subscriber(kind, data)`` called for each event reported to the daemon:
        ``ready``, ``errored``, ``scaled`` (pmx.master.control)."""
        self._subscribers.append(subscriber)

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        for subscriber in self._subscribers:
            subscriber(kind, data)

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
        if self.title:
            setproctitle(f"pmx: master {self.config.name} {self.address}")
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
        for sig in handled:
            loop.add_signal_handler(sig, self.events.put_nowait, ("signal", sig))
        admin: Admin | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            log.info(
                "starting %s: %d worker(s) of %s on %s (%s; master pid %d)",
                self.config.name, self.config.workers, self.config.app,
                self._url(), self.policy.describe(), os.getpid(),
            )
            if self.config.admin:
                admin = Admin(self)
                where = parse_bind(self.config.admin)
                self.admin_address = await admin.start(where.host, where.port)
            for worker_id in range(1, self.config.workers + 1):
                self.fill(worker_id)
            self.rebalance.start()
            tasks.append(loop.create_task(self.supervisor.run()))
            if self.config.watch:
                tasks.append(loop.create_task(watch(self, self.reloader)))
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
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if admin is not None:
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
            running = self.state in (AppState.STARTING, AppState.RUNNING)
            if running and self.slots.state(event[1]) is SlotState.WAITING:
                self.fill(event[1])
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
                worker.kill()
            return
        self.begin_stop(signal.Signals(sig).name)

    # ------------------------------------------------------------------ workers

    def fill(self, slot_id: int) -> None:
        """Start a worker in the empty slot ``slot_id``; if the process cannot be started
        (out of processes, memory or fds), try again after the slot's backoff."""
        try:
            self.slots.spawn(slot_id)
        except OSError as exc:
            delay = self._backoff(slot_id).on_exit(0.0)
            log.error("worker #%d could not be started: %s; trying again in %.1f s",
                      slot_id, exc, delay)
            self._respawn_later(slot_id, delay)

    def _start_worker(self, slot_id: int, replacement: bool) -> Worker:
        """Start a worker process and watch it; the slot table's only way to start one."""
        worker = self.launcher(
            self.config, slot_id, self.clock(), replacement=replacement,
            log_prefix=self.log_prefix, live_load=self.policy.live_load,
            watch_blocks=self.policy.watches_loops,
        )
        self.live.append(worker)
        loop = asyncio.get_running_loop()
        loop.add_reader(worker.chan.fileno(), self._on_message, worker)
        if worker.pidfd >= 0:
            loop.add_reader(worker.pidfd, self.events.put_nowait, ("exit",))
        log.debug("worker #%d spawned (pid %d)", slot_id, worker.pid)
        return worker

    def _respawn_later(self, slot_id: int, delay: float) -> None:
        self.slots.schedule(slot_id, delay, self._respawn_due)

    def _respawn_due(self, slot_id: int) -> None:
        self.events.put_nowait(("spawn", slot_id))

    def _backoff(self, slot_id: int) -> Backoff:
        return self.backoffs.setdefault(slot_id, Backoff())

    def _on_message(self, worker: Worker) -> None:
        for message, fds in channel.pending(worker.chan):
            kind = message[:1]
            if kind == channel.HAND_BACK:
                self.rebalance.handed_back(worker, fds)
                continue
            if kind == channel.GATHERED:
                self.rebalance.gathered(worker, fds)
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
                worker.threads = int(channel.decode_json(message).get("threads", 0))
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
        """The worker has imported the app and run its startup: probe it, and admit it
        to the rotation once the probe passes (``record_probe``)."""
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
        if after is Health.OK and not self.in_rotation(worker):
            if before is Health.FAILING:
                log.info("worker #%d (pid %d) is healthy again: back in rotation",
                         worker.id, worker.pid)
            self._admit(worker)
        elif after is Health.FAILING and before is not Health.FAILING:
            log.warning("worker #%d (pid %d) failed %d health checks in a row: out of rotation",
                        worker.id, worker.pid, worker.health.failures)
            self._out_of_rotation(worker)
            self._announce()  # a worker that never passed no longer holds up the start

    def record_stall(self, worker: Worker, seconds: float) -> None:
        """An idle worker whose loop has not turned for ``seconds`` (frozen, or stuck
        outside any request) fails its health check at once."""
        if worker.state is not WorkerState.READY or worker.health.state is Health.FAILING:
            return
        worker.health.stall()
        log.warning("worker #%d (pid %d) has not turned its loop for %.1f s while idle: "
                    "out of rotation", worker.id, worker.pid, seconds)
        self._out_of_rotation(worker)
        self._announce()

    def _admit(self, worker: Worker) -> None:
        """The worker joins the rotation: it is handed connections from now on."""
        self.dispatch.add(worker)
        self.rebalance.joined(worker)
        if worker.ready_waiter is not None and not worker.ready_waiter.done():
            worker.ready_waiter.set_result(None)
        if self.state is AppState.STARTING:
            self.lifecycle.to(AppState.RUNNING, f"worker #{worker.id} in rotation")
            log.info("%s is serving on %s", self.config.name, self._url())
        self._announce()

    def _out_of_rotation(self, worker: Worker) -> None:
        """The worker is handed no more connections (failing, draining or gone). Those
        it was handed and has not read yet are in the same place as new ones: while
        another worker is in rotation, they are taken back from its inbox and go there
        too (a worker failing its health checks, or frozen, may never read them; one
        draining would serve them but takes no new work). With none, or when the app is
        stopping (each worker serves what it was handed), they stay."""
        self.dispatch.remove(worker)
        if self.dispatch.rotation and not self.dispatch.closed:
            unread = worker.reclaim()
            if unread:
                log.info("worker #%d (pid %d) out of rotation with %d connection(s) "
                         "unread; handing them to other workers", worker.id, worker.pid,
                         len(unread))
                self.dispatch.rehome(unread, worker)

    def in_rotation(self, worker: Worker) -> bool:
        return worker in self.dispatch.rotation

    def rotation_size(self) -> int:
        return len(self.dispatch.rotation)

    def _announce(self) -> None:
        """Tell the daemon the app is up once no initial worker is still starting."""
        if self.announced or self.state not in (AppState.RUNNING, AppState.ERRORED):
            return
        if any(
            w.state is WorkerState.STARTING
            or w.state is WorkerState.READY and w.health.state is Health.PENDING
            for w in self.live
        ):
            return
        self.announced = True
        self._emit("ready", {"bind": str(self.address)})

    def _on_leaving(self, worker: Worker) -> None:
        """The worker got SIGTERM from someone: drain it and start a replacement."""
        if worker.state is WorkerState.READY:
            log.info("worker #%d (pid %d) asked to stop; replacing it", worker.id, worker.pid)
            self.drain(worker)
            if self.state in (AppState.STARTING, AppState.RUNNING):
                self.record(worker, "signal", "SIGTERM")
                if self.slots.state(worker.id) is SlotState.EMPTY:  # else its replacement
                    self.fill(worker.id)                            # holds the slot now
        else:
            self._send_stop(worker)

    def retire(self, worker: Worker, reason: str, detail: str) -> None:
        """Record why ``worker`` leaves (reload, recycling, scale), then drain it."""
        self.record(worker, reason, detail)
        self.drain(worker)

    def drain(self, worker: Worker) -> None:
        """Out of its slot and out of rotation first, then STOP: no fd can follow the
        STOP."""
        self._out_of_rotation(worker)
        self.slots.leave(worker)
        if worker.state is WorkerState.STARTING:
            worker.transition(WorkerState.DRAINING, "stop before ready")
            worker.signal(signal.SIGTERM)
            return
        worker.transition(WorkerState.DRAINING)
        worker.drain_deadline = self.clock() + self.config.graceful_timeout
        self._send_stop(worker)

    def abandon(self, worker: Worker, why: str) -> None:
        """Kill a new worker that will not be used (a replacement not ready in time).
        If it held its slot alone (the worker it replaced has gone), refill the slot."""
        if worker.process.poll() is not None or worker.state not in (
                WorkerState.STARTING, WorkerState.READY):
            return
        worker.transition(WorkerState.DRAINING, why)
        self._out_of_rotation(worker)
        after = self.slots.leave(worker)
        worker.process.kill()
        if after is SlotState.EMPTY and self.state in (AppState.STARTING, AppState.RUNNING):
            self._respawn_later(worker.id, self._backoff(worker.id).on_exit(0.0))

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

    def _forget(self, worker: Worker) -> None:
        """Release what the master holds of an exited worker."""
        self.live.remove(worker)
        unread = worker.reclaim()  # connections it never picked up go to the others
        self.dispatch.remove(worker)
        asyncio.get_running_loop().remove_reader(worker.chan.fileno())
        self._on_message(worker)  # a last ERROR may still be queued
        if unread:
            log.warning("worker #%d (pid %d) exited with %d connection(s) unread; "
                        "handing them to other workers", worker.id, worker.pid, len(unread))
            self.dispatch.rehome(unread, worker)
        worker.close()

    def _on_exit(self, worker: Worker, code: int) -> None:
        self._forget(worker)
        uptime = self.clock() - worker.started_at
        if worker.state is WorkerState.DRAINING:
            worker.transition(WorkerState.STOPPED)
            log.info("worker #%d (pid %d) stopped (%s)", worker.id, worker.pid, describe_exit(code))
            return
        was_ready = worker.ready_at is not None
        held_alone = self.slots.role(worker) == "holder"
        after = self.slots.leave(worker)
        worker.transition(WorkerState.FAILED, describe_exit(code))
        if worker.replacement and not was_ready:
            # A new worker failed: its reload or recycling reports it, and the worker it
            # was to replace serves on. If that one has gone too, the slot is empty.
            error = self._boot_error(worker, code)
            log.error("worker #%d (pid %d) failed to start: %s",
                      worker.id, worker.pid, error.message.partition("failed to start: ")[2])
            if worker.ready_waiter is not None and not worker.ready_waiter.done():
                worker.ready_waiter.set_exception(error)
            if held_alone and after is SlotState.EMPTY and self.state in (
                    AppState.STARTING, AppState.RUNNING):
                self._respawn_later(worker.id, self._backoff(worker.id).on_exit(uptime))
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
            if self.state is AppState.STARTING and (
                code == channel.BOOT_ERROR or self.boot_failures >= self.config.max_boot_failures
            ):
                self._fail(self._boot_error(worker, code))
                return
            if self.boot_failures >= self.config.max_boot_failures:
                self._give_up(worker, code)
                return
        self._announce()
        delay = self._backoff(worker.id).on_exit(uptime)
        log.warning(
            "worker #%d (pid %d) died (%s) after %.1f s; restarting in %.1f s",
            worker.id, worker.pid, describe_exit(code), uptime, delay,
        )
        if worker.error:
            log.warning("worker #%d error: %s", worker.id, worker.error.strip())
        self.record(worker, "crash" if was_ready else "boot", describe_exit(code))
        if after is not SlotState.EMPTY:  # its replacement holds the slot now
            log.info("worker #%d: its replacement is already starting", worker.id)
            return
        self._respawn_later(worker.id, delay)

    def record(self, worker: Worker, reason: str, detail: str) -> None:
        self.history.record(worker, reason, detail)

    def _boot_error(self, worker: Worker, code: int) -> BootError:
        return boot_error(self.config.app, worker, code)

    def _give_up(self, worker: Worker, code: int) -> None:
        self.lifecycle.to(AppState.ERRORED, f"{self.boot_failures} boot failures in a row")
        last = self._boot_error(worker, code)
        log.error(
            "%s errored: %d worker(s) in a row exited before becoming ready; "
            "not restarting (last: %s)",
            self.config.name, self.boot_failures, last.message,
        )
        self._emit("errored", {"error": wire.error(last)})
        reason = last.message.partition("failed to start: ")[2] or last.message
        self.errored_because = (f"{self.boot_failures} workers in a row exited before "
                                f"becoming ready; last error: {reason}")
        if not self.live:
            self._fail(AppErrored(f'app "{self.config.name}" errored: {self.errored_because}'))

    def _fail(self, error: PmxError) -> None:
        self.failure = error
        self.begin_stop("failure")

    # ------------------------------------------------- reload, scale, status

    def start_reload(self, parallel: int = 1) -> asyncio.Task[list[int]]:
        """Begin a rolling reload (pmx.master.reload) in the background."""
        return self.reloader.start_reload(parallel)

    def scale(self, workers: int) -> None:
        """Grow or shrink to ``workers`` (pmx.master.scaling)."""
        scaling.scale(self, workers)

    def set_wanted(self, workers: int) -> None:
        """The app wants ``workers`` workers from now on; the daemon is told."""
        self.config.workers = workers
        self.policy.wants(workers)
        self._emit("scaled", {"workers": workers})

    def snapshot(self) -> dict[str, Any]:
        """The status snapshot (pmx.master.status)."""
        return status.snapshot(self)

    # ------------------------------------------------------------------ stopping

    def begin_stop(self, why: str) -> None:
        if self.state in (AppState.STOPPING, AppState.STOPPED):
            return
        self.lifecycle.to(AppState.STOPPING, why)
        self.dispatch.close()
        if self.owns_listener:
            self.listener.close()  # type: ignore[union-attr]  # new connections are refused
        self.slots.cancel_all()
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
                    worker.kill()
            self.reap()
        if not self.live:
            self.lifecycle.to(AppState.STOPPED)
            if self.failure is None:
                log.info("%s stopped", self.config.name)

    def _kill_all(self) -> None:
        for worker in list(self.live):
            if worker.process.poll() is None:
                worker.kill()
        self.live.clear()

    def _url(self) -> str:
        return str(self.address) if self.address.is_unix else f"http://{self.address}"
