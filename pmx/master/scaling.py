"""Scaling an app: ``pmx scale``, SIGTTIN/SIGTTOU.

The app wants ``config.workers`` workers. Slots are worker ids: the live workers not
draining, plus slots waiting for a respawn timer. Growing takes the lowest free ids;
shrinking removes the highest ids, cancelling their respawns and draining (not killing)
their workers, with reason ``scale`` in the history.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pmx.errors import ConfigError, PmxError
from pmx.master.workers import WorkerState

if TYPE_CHECKING:
    from pmx.master.arbiter import Master

log = logging.getLogger("pmx.master")


def scale(master: Master, workers: int) -> None:
    from pmx.master.arbiter import AppState

    name = master.config.name
    if workers < 1:
        raise ConfigError("workers", f"'{workers}' is not a valid worker count: expected >= 1.")
    if master.state not in (AppState.STARTING, AppState.RUNNING):
        raise PmxError(f"cannot scale {name} while it is {master.state.value}.")
    if master.replacing:
        raise PmxError(f"cannot scale {name} while workers are being replaced.")
    log.info("scaling %s from %d to %d worker(s)", name, master.config.workers, workers)
    master.config.workers = workers
    master.on_event("scaled", {"workers": workers})
    serving = (WorkerState.STARTING, WorkerState.READY)
    active = {w.id: w for w in master.live if w.state in serving}
    slots = set(active) | set(master.respawns)
    for worker_id in sorted(slots, reverse=True)[: max(0, len(slots) - workers)]:
        if worker_id in master.respawns:
            master.respawns.pop(worker_id).cancel()
        if worker_id in active:
            master.record(active[worker_id], "scale", f"scaled to {workers}")
            master.drain(active[worker_id])
    free = (i for i in range(1, 10**6) if i not in slots)
    for _ in range(workers - len(slots)):
        master.spawn(next(free))
