"""Periodic supervision of a master's workers: health probes, recycling, overdue drains.

Every TICK the supervisor
- times out unanswered probes (a failure) and sends the next probe every
  ``health_interval`` to each ready worker (``probe``/``record_probe`` of the master);
- takes out of rotation at once an idle worker whose load slot has not been stamped
  for ``health_timeout`` (at least STALL_MIN; its loop is frozen, or stuck outside any request:
  ``record_stall``), without waiting for ``fall`` probes to fail;
- samples memory every ``memory_interval`` when ``max_memory`` is set: RSS of the worker
  and its children, over the limit for MEMORY_STRIKES samples in a row marks it for
  recycling;
- marks a worker that has served its ``request_limit`` (``max_requests`` + jitter);
- replaces the marked workers through the reloader's ``replace`` (a fresh worker ready
  first, then the old one drains), several at once but never more than half the slots
  (rounded up): each replacement boots an interpreter beside the workers serving.
  Never during a reload. A worker failing its health checks long enough is replaced
  the same way;
- SIGKILLs a draining worker still running ``graceful_timeout`` after its drain began.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pmx.backoff import Backoff
from pmx.master.roles import Replacer, Supervised
from pmx.master.sampler import Sampler
from pmx.master.slots import SlotState
from pmx.master.states import AppState
from pmx.master.workers import Worker, WorkerState

log = logging.getLogger("pmx.master")

TICK = 0.1
MEMORY_STRIKES = 3
# An idle worker stamps its load slot every 0.1 s: ten missed stamps at least, whatever
# --health-timeout, before its loop counts as frozen (a loaded machine can delay a few).
STALL_MIN = 1.0


def due(worker: Worker) -> str:
    """Why this ready worker should be replaced now, or ""."""
    if worker.health.due_for_replacement:
        return "health"
    if worker.memory_strikes >= MEMORY_STRIKES:
        return "memory"
    if worker.request_limit and worker.report.requests >= worker.request_limit:
        return "max-requests"
    return ""


def retry_backoff() -> Backoff:
    """The wait before trying again after a failed replacement: 1 s, doubling up to
    60 s while replacements keep failing. (A failure has no uptime to forgive it: the
    schedule starts over only when a replacement succeeds.)"""
    return Backoff(initial=1.0, cap=60.0, reset_after=float("inf"))


class Supervisor:
    def __init__(self, master: Supervised, reloader: Replacer, sampler: Sampler) -> None:
        self.master = master
        self.reloader = reloader
        self.sampler = sampler
        self.replacing: set[asyncio.Task[Worker]] = set()
        self.retry = retry_backoff()
        self.retry_at = 0.0
        self.next_memory = 0.0

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(TICK)
                self.tick()
        finally:  # cancelled (the app stops): so are the replacements under way, and awaited
            for task in list(self.replacing):
                task.cancel()
            await asyncio.gather(*self.replacing, return_exceptions=True)

    def tick(self) -> None:
        master, config = self.master, self.master.config
        if master.state not in (AppState.STARTING, AppState.RUNNING, AppState.ERRORED):
            return
        now = master.clock()
        sample = bool(config.max_memory) and now >= self.next_memory
        if sample:
            self.next_memory = now + config.memory_interval
        for worker in list(master.live):
            if worker.state is WorkerState.DRAINING:
                if worker.drain_deadline and now > worker.drain_deadline:
                    log.warning(
                        "worker #%d (pid %d) still draining %g s after it was replaced; "
                        "sending SIGKILL", worker.id, worker.pid, config.graceful_timeout,
                    )
                    worker.drain_deadline = 0.0
                    worker.process.kill()
                continue
            if worker.state is not WorkerState.READY:
                continue
            stalled = _stalled(worker)
            if stalled > max(config.health_timeout, STALL_MIN):
                master.record_stall(worker, stalled)
            sent = worker.probe_sent_at
            if sent is not None and now - sent > config.health_timeout:
                worker.probe_sent_at = None
                master.record_probe(worker, False)
            idle = now - worker.last_probe_at
            if worker.probe_sent_at is None and idle >= config.health_interval:
                master.probe(worker)
            if sample:
                worker.memory = self.sampler.tree_rss(worker.pid)
                over = worker.memory > config.max_memory
                worker.memory_strikes = worker.memory_strikes + 1 if over else 0
        if self.reloader.busy or master.state is not AppState.RUNNING or now < self.retry_at:
            return
        room = (len(master.slots.ids()) + 1) // 2 - len(self.replacing)  # half, rounded up
        for worker in master.slots.holders():
            if room <= 0:
                break
            if master.slots.state(worker.id) is not SlotState.HELD:
                continue  # being replaced already
            reason = due(worker) if worker.state is WorkerState.READY else ""
            if reason:
                log.info("replacing worker #%d (pid %d): %s", worker.id, worker.pid,
                         _why(worker, reason))
                task = asyncio.get_running_loop().create_task(
                    self.reloader.replace(worker, reason))
                self.replacing.add(task)
                task.add_done_callback(self._done)
                room -= 1

    def _done(self, task: asyncio.Task[Worker]) -> None:
        self.replacing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            delay = self.retry.on_exit(0.0)
            self.retry_at = self.master.clock() + delay
            log.error("could not replace a worker (next try in %.0f s): %s",
                      delay, task.exception())
        else:
            self.retry.failures = 0


def _stalled(worker: Worker) -> float:
    """How long an idle worker's loop has not turned (0.0 if busy or turning). An idle
    worker stamps its load slot every 0.1 s (pmx.worker.process TICK), with
    CLOCK_MONOTONIC, which is system-wide; a worker with requests in flight may be
    inside a long synchronous call, which is least-busy's business, not a health
    failure."""
    if worker.slot is None:
        return 0.0
    raw = worker.slot.raw()
    inflight, active_at = raw[2], raw[-1]
    if inflight or not active_at:
        return 0.0
    return max(0.0, time.monotonic() - active_at)


def _why(worker: Worker, reason: str) -> str:
    if reason == "memory":
        return f"memory {worker.memory // (1024 * 1024)} MiB over the limit"
    if reason == "max-requests":
        return f"served {worker.report.requests} requests"
    return f"failed {worker.health.failures} health checks in a row"
