"""Periodic supervision of a master's workers: health probes, recycling, overdue drains.

Every TICK the supervisor
- times out unanswered probes (a failure) and sends the next probe every
  ``health_interval`` to each ready worker (``Master.probe``/``record_probe``);
- samples memory every ``memory_interval`` when ``max_memory`` is set: RSS of the worker
  and its children, over the limit for MEMORY_STRIKES samples in a row marks it for
  recycling;
- marks a worker that has served its ``request_limit`` (``max_requests`` + jitter);
- replaces one marked worker at a time through ``pmx.master.reload.replace`` (a fresh
  worker ready first, then the old one drains), and never during a reload; a worker
  failing its health checks long enough is replaced the same way;
- SIGKILLs a draining worker still running ``graceful_timeout`` after its drain began.
"""

from __future__ import annotations

import asyncio
import logging

import psutil

from pmx.master.arbiter import AppState, Master
from pmx.master.backoff import Backoff
from pmx.master.reload import replace
from pmx.master.workers import Worker, WorkerState

log = logging.getLogger("pmx.master")

TICK = 0.1
MEMORY_STRIKES = 3


def memory_of(pid: int) -> int:
    """RSS of a process and all its children, in bytes (0 if it is gone)."""
    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return int(total)
    except psutil.Error:
        return 0


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


async def supervise(master: Master) -> None:
    config = master.config
    next_memory = 0.0
    replacing: set[asyncio.Task[Worker]] = set()
    retry = retry_backoff()
    retry_at = 0.0

    def done(task: asyncio.Task[Worker]) -> None:
        nonlocal retry_at
        replacing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            delay = retry.on_exit(0.0)
            retry_at = master.clock() + delay
            log.error("could not replace a worker (next try in %.0f s): %s",
                      delay, task.exception())
        else:
            retry.failures = 0
    try:
        while True:
            await asyncio.sleep(TICK)
            if master.state not in (AppState.STARTING, AppState.RUNNING, AppState.ERRORED):
                continue
            now = master.clock()
            sample = bool(config.max_memory) and now >= next_memory
            if sample:
                next_memory = now + config.memory_interval
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
                sent = worker.probe_sent_at
                if sent is not None and now - sent > config.health_timeout:
                    worker.probe_sent_at = None
                    master.record_probe(worker, False)
                idle = now - worker.last_probe_at
                if worker.probe_sent_at is None and idle >= config.health_interval:
                    master.probe(worker)
                if sample:
                    worker.memory = memory_of(worker.pid)
                    over = worker.memory > config.max_memory
                    worker.memory_strikes = worker.memory_strikes + 1 if over else 0
            busy = replacing or master.replacing or master.reloading
            if busy or master.state is not AppState.RUNNING or now < retry_at:
                continue
            for worker in sorted(master.live, key=lambda w: w.id):
                reason = due(worker) if worker.state is WorkerState.READY else ""
                if reason:
                    log.info("replacing worker #%d (pid %d): %s", worker.id, worker.pid,
                             _why(worker, reason))
                    task = asyncio.get_running_loop().create_task(replace(master, worker, reason))
                    replacing.add(task)
                    task.add_done_callback(done)
                    break
    finally:  # cancelled (the app stops): so are the replacements under way, and awaited
        for task in list(replacing):
            task.cancel()
        await asyncio.gather(*replacing, return_exceptions=True)


def _why(worker: Worker, reason: str) -> str:
    if reason == "memory":
        return f"memory {worker.memory // (1024 * 1024)} MiB over the limit"
    if reason == "max-requests":
        return f"served {worker.report.requests} requests"
    return f"failed {worker.health.failures} health checks in a row"
