"""Scaling an app: ``pmx scale``, SIGTTIN/SIGTTOU.

The app wants ``config.workers`` workers, one per slot (pmx.master.slots). Growing adds
the lowest free slot ids and starts a worker in each; shrinking removes the highest
slots, cancelling their pending respawns and draining (not killing) their workers, with
reason ``scale`` in the history. Refused while a worker is being replaced.
"""

from __future__ import annotations

import logging

from pmx.errors import ConfigError, PmxError
from pmx.master.roles import Scaling
from pmx.master.states import AppState

log = logging.getLogger("pmx.master")


def scale(master: Scaling, workers: int) -> None:
    name = master.config.name
    if workers < 1:
        raise ConfigError("workers", f"'{workers}' is not a valid worker count: expected >= 1.")
    if master.state not in (AppState.STARTING, AppState.RUNNING):
        raise PmxError(f"cannot scale {name} while it is {master.state.value}.")
    if master.slots.replacing():
        raise PmxError(f"cannot scale {name} while workers are being replaced.")
    log.info("scaling %s from %d to %d worker(s)", name, master.config.workers, workers)
    master.set_wanted(workers)
    slots = master.slots.ids()
    for slot_id in sorted(slots, reverse=True)[: max(0, len(slots) - workers)]:
        worker = master.slots.remove(slot_id)
        if worker is not None:
            master.retire(worker, "scale", f"scaled to {workers}")
    free = (i for i in range(1, 10**6) if i not in slots)
    for _ in range(workers - len(slots)):
        master.fill(next(free))
