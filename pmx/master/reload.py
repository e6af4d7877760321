"""Replacing workers without losing a request: rolling reloads and recycling.

Design. Replacing worker W of slot n: spawn a fresh worker for slot n (a new interpreter,
so it runs the code on disk now) and wait until it is ready (imported, lifespan startup
done) within ``ready_timeout``. It joins the rotation the moment it is ready. Only then
does W leave the rotation and get its STOP, after which it serves every connection it
was handed and exits. So at every moment the slot has a worker in rotation, and no
connection is handed to a worker that will not serve it.

If the new worker fails (exits before it is ready, or is not ready in time), it is
killed and W is left exactly as it was: a reload of broken code changes nothing and
reports the new worker's error.

A reload replaces every worker, ``parallel`` at a time, and stops at the first failure.
Recycling (max-requests, memory, health) goes through the same ``replace``, one at a
time per slot: ``master.replacing`` holds the slots being replaced.
"""

from __future__ import annotations

import asyncio
import logging

from pmx.errors import BootError
from pmx.master.arbiter import AppState, Master
from pmx.master.workers import Worker, WorkerState

log = logging.getLogger("pmx.master")


class ReloadError(BootError):
    """A new worker could not start; the old ones keep serving. ``detail``: its error."""


async def replace(master: Master, old: Worker, reason: str) -> Worker:
    """Swap ``old`` for a fresh worker in the same slot; raise ReloadError if the new one
    cannot start (``old`` then keeps serving)."""
    if old.id in master.replacing:
        raise ReloadError(f"worker #{old.id} is already being replaced.")
    master.replacing.add(old.id)
    try:
        new = master.spawn(old.id, replacement=True)
        new.ready_waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(new.ready_waiter), master.config.ready_timeout)
        except asyncio.TimeoutError:
            _abandon(master, new)
            raise ReloadError(
                f"worker #{new.id} (pid {new.pid}) was not ready after "
                f"{master.config.ready_timeout:g} s."
            ) from None
        except BootError as exc:
            reason_text = exc.message.partition("failed to start: ")[2] or exc.message
            raise ReloadError(
                f"worker #{new.id} (pid {new.pid}) failed to start: {reason_text}", exc.detail
            ) from None
        if old.state in (WorkerState.READY, WorkerState.STARTING):
            log.info(
                "worker #%d: pid %d replaces pid %d (%s)", old.id, new.pid, old.pid, reason
            )
            master.record(old, reason, f"replaced by pid {new.pid}")
            master.drain(old)
        return new
    except BaseException:
        # The old worker died while its replacement was starting, which then failed:
        # the slot is empty, and nothing else refills it.
        if old.state not in (WorkerState.READY, WorkerState.STARTING) and master.state in (
                AppState.STARTING, AppState.RUNNING):
            master.replacing.discard(old.id)
            master.respawn_later(old.id, 1.0)
        raise
    finally:
        master.replacing.discard(old.id)


def _abandon(master: Master, new: Worker) -> None:
    """Kill a new worker that did not become ready, or never passed a health probe."""
    if new.process.poll() is None and new.state in (WorkerState.STARTING, WorkerState.READY):
        new.transition(WorkerState.DRAINING, "not ready in time")
        master.dispatch.remove(new)
        new.process.kill()


async def reload(master: Master, parallel: int = 1) -> list[int]:
    """Replace every worker, ``parallel`` at a time. Returns the new pids."""
    if master.reloading:
        raise ReloadError(f"a reload of {master.config.name} is already in progress.")
    if master.state is not AppState.RUNNING:
        raise ReloadError(f"cannot reload {master.config.name} while it is {master.state.value}.")
    master.reloading = True
    log.info("reloading %s: %d worker(s), %d at a time",
             master.config.name, len(master.live), parallel)
    try:
        old = sorted(
            (w for w in master.live if w.state in (WorkerState.READY, WorkerState.STARTING)),
            key=lambda w: w.id,
        )
        new_pids: list[int] = []
        for start in range(0, len(old), parallel):
            batch = old[start : start + parallel]
            results = await asyncio.gather(
                *(replace(master, w, "reload") for w in batch), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    log.error("reload of %s stopped: %s", master.config.name, result)
                    raise result
                new_pids.append(result.pid)
        log.info("reload of %s done: pids %s", master.config.name, new_pids)
        return new_pids
    finally:
        master.reloading = False
