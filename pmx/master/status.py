"""A master's status snapshot: plain data for ``pmx status``, ``describe`` and monit.

The per-worker part of the schema documented in docs/cli.md (``status --json``).
CPU and memory are sampled with psutil here, in the master, which keeps one
``psutil.Process`` per worker so that CPU percentages are measured between calls.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import psutil

from pmx.master.workers import Worker, WorkerState

if TYPE_CHECKING:
    from pmx.master.arbiter import Master

_processes: dict[int, psutil.Process] = {}


def sample(pid: int) -> tuple[float | None, int | None]:
    """CPU percent since the previous sample of this pid, and RSS in bytes."""
    try:
        proc = _processes.get(pid)
        if proc is None:  # the first CPU sample only sets the baseline
            proc = _processes[pid] = psutil.Process(pid)
            proc.cpu_percent(None)
            return None, proc.memory_info().rss
        with proc.oneshot():
            return proc.cpu_percent(None), proc.memory_info().rss
    except psutil.Error:
        _processes.pop(pid, None)
        return None, None


def rss(pid: int) -> int:
    """Resident memory in bytes, without disturbing ``sample``'s CPU baseline."""
    try:
        proc = _processes.get(pid) or psutil.Process(pid)
        return int(proc.memory_info().rss)
    except psutil.Error:
        return 0


def worker_status(master: Master, worker: Worker, now: float) -> dict[str, Any]:
    cpu, memory = sample(worker.pid)
    return {
        "id": worker.id,
        "pid": worker.pid,
        "state": worker.state.value,
        "uptime": round(now - worker.started_at, 3),
        "restarts": master.restarts.get(worker.id, 0),
        "cpu": cpu,
        "memory": memory,
        "connections": worker.load,
        "requests": worker.report.requests,
        "moved": worker.moved,
        "health": worker.health.state.value if worker.state is WorkerState.READY else "unknown",
    }


def snapshot(master: Master) -> dict[str, Any]:
    now = master.clock()
    # Forget the processes gone; the master's own sample is kept, or its CPU would be
    # measured from scratch (and be unknown) every time.
    for pid in set(_processes) - {w.pid for w in master.live} - {os.getpid()}:
        del _processes[pid]
    cpu, memory = sample(os.getpid())
    return {
        "state": master.state.value,
        "bind": str(master.address),
        "admin": master.admin_address,
        "balance": master.policy.name,
        "workers_wanted": master.config.workers,
        "connections_moved": master.rebalance.moved,
        "master_pid": os.getpid(),
        "master_cpu": cpu,
        "master_memory": memory,
        "workers": [worker_status(master, w, now) for w in sorted(master.live, key=_order)],
        "history": list(master.history),
        "time": time.time(),
    }


def _order(worker: Worker) -> tuple[int, int]:
    return (worker.id, worker.pid)
