"""A master's status snapshot: plain data for ``pmx status``, ``describe`` and monit.

The per-worker part of the schema documented in docs/cli.md (``status --json``). CPU
and memory come from the master's one ``Sampler`` (pmx.master.sampler).
"""

from __future__ import annotations

import os
import time
from typing import Any

from pmx.master.roles import Observed
from pmx.master.workers import Worker, WorkerState


def worker_status(master: Observed, worker: Worker, now: float) -> dict[str, Any]:
    cpu, memory = master.sampler.sample(worker.pid)
    report = worker.report
    return {
        "id": worker.id,
        "pid": worker.pid,
        "state": worker.state.value,
        "uptime": round(now - worker.started_at, 3),
        "restarts": master.history.by_slot.get(worker.id, 0),
        "cpu": cpu,
        "memory": memory,
        "connections": worker.load,
        "requests": report.requests,
        "moved": worker.moved,
        "reclaimed": worker.reclaimed,
        "blocking": report.blockers,
        "blocked": report.blocked,
        "holding": report.holding,
        "health": worker.health.state.value if worker.state is WorkerState.READY else "unknown",
    }


def snapshot(master: Observed) -> dict[str, Any]:
    now = master.clock()
    # Forget the processes gone. The master's own sample is kept, or its CPU would be
    # measured from scratch (and be unknown) every time.
    master.sampler.keep_only({w.pid for w in master.live} | {os.getpid()})
    cpu, memory = master.sampler.sample(os.getpid())
    return {
        "state": master.state.value,
        "bind": str(master.address),
        "admin": master.admin_address,
        "balance": master.policy_name,
        "balancing": master.balancing,
        "workers_wanted": master.config.workers,
        "connections_moved": master.connections_moved,
        "master_pid": os.getpid(),
        "master_cpu": cpu,
        "master_memory": memory,
        "workers": [worker_status(master, w, now) for w in sorted(master.live, key=_order)],
        "history": list(master.history.records),
        "time": time.time(),
    }


def _order(worker: Worker) -> tuple[int, int]:
    return (worker.id, worker.pid)
