"""Replacing workers without losing a request: rolling reloads and recycling.

Design. Replacing worker W of slot n: spawn a fresh worker for slot n (a new interpreter,
so it runs the code on disk now) and wait until it is ready (imported, lifespan startup
done) within ``ready_timeout``. It joins the rotation the moment it is ready. Only then
does it take over the slot, and W leaves the rotation and gets its STOP, after which it
serves every connection it was handed and exits. So at every moment the slot has a
worker in rotation, and no connection is handed to a worker that will not serve it.

If the new worker fails (exits before it is ready, or is not ready in time), it is
killed and W is left exactly as it was: a reload of broken code changes nothing and
reports the new worker's error.

The slot table (pmx.master.slots) refuses a second replacement for a slot, and keeps
the slot's ownership straight when W dies while its replacement starts: the replacement
then holds the slot alone, and nothing else is started for it.

A reload replaces every worker, ``parallel`` at a time, and stops at the first failure.
Recycling (max-requests, memory, health) goes through the same ``replace``.
"""

from __future__ import annotations

import asyncio
import logging

from pmx.errors import BootError
from pmx.master.roles import Replacing
from pmx.master.slots import SlotState, SlotTaken
from pmx.master.states import AppState
from pmx.master.workers import Worker, WorkerState

log = logging.getLogger("pmx.master")


class ReloadError(BootError):
    """A new worker could not start; the old ones keep serving. ``detail``: its error."""


def _log_failure(task: asyncio.Task[list[int]]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved here; reload() has logged the failure


class Reloader:
    def __init__(self, master: Replacing) -> None:
        self.master = master
        self._reloading = False

    @property
    def busy(self) -> bool:
        """A reload is under way."""
        return self._reloading

    async def replace(self, old: Worker, reason: str) -> Worker:
        """Swap ``old`` for a fresh worker in the same slot; raise ReloadError if the new
        one cannot start (``old`` then keeps serving)."""
        master = self.master
        if master.slots.state(old.id) is SlotState.REPLACING:
            raise ReloadError(f"worker #{old.id} is already being replaced.")
        try:
            new = master.slots.spawn_replacement(old)
        except SlotTaken as exc:
            raise ReloadError(f"{exc}.") from None
        except OSError as exc:
            raise ReloadError(f"worker #{old.id}: could not start its replacement: "
                              f"{exc}.") from None
        new.ready_waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(new.ready_waiter), master.config.ready_timeout)
        except asyncio.TimeoutError:
            master.abandon(new, "not ready in time")
            raise ReloadError(
                f"worker #{new.id} (pid {new.pid}) was not ready after "
                f"{master.config.ready_timeout:g} s."
            ) from None
        except BootError as exc:
            reason_text = exc.message.partition("failed to start: ")[2] or exc.message
            raise ReloadError(
                f"worker #{new.id} (pid {new.pid}) failed to start: {reason_text}", exc.detail
            ) from None
        if new.state is not WorkerState.READY:  # it became ready, then died at once
            raise ReloadError(f"worker #{new.id} (pid {new.pid}) exited after it was ready.")
        replaced = master.slots.take_over(new)
        if replaced is not None and replaced.state in (WorkerState.READY, WorkerState.STARTING):
            log.info("worker #%d: pid %d replaces pid %d (%s)", old.id, new.pid, replaced.pid,
                     reason)
            master.retire(replaced, reason, f"replaced by pid {new.pid}")
        return new

    def start_reload(self, parallel: int = 1) -> asyncio.Task[list[int]]:
        """Begin a rolling reload in the background."""
        task = asyncio.get_running_loop().create_task(self.reload(parallel))
        task.add_done_callback(_log_failure)
        return task

    async def reload(self, parallel: int = 1) -> list[int]:
        """Replace every worker, ``parallel`` at a time. Returns the new pids."""
        master = self.master
        name = master.config.name
        if self._reloading:
            raise ReloadError(f"a reload of {name} is already in progress.")
        if master.state is not AppState.RUNNING:
            raise ReloadError(f"cannot reload {name} while it is {master.state.value}.")
        self._reloading = True
        slot_ids = [w.id for w in master.slots.holders()]
        log.info("reloading %s: %d worker(s), %d at a time", name, len(slot_ids), parallel)
        try:
            new_pids: list[int] = []
            for start in range(0, len(slot_ids), parallel):
                # Each slot's worker now: one may have been respawned since the start
                # (it runs the new code already, but is replaced all the same), and a
                # slot waiting for its respawn is skipped (that one will).
                batch = [w for i in slot_ids[start : start + parallel]
                         if (w := master.slots.holder(i)) is not None]
                results = await asyncio.gather(
                    *(self.replace(w, "reload") for w in batch), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException):
                        log.error("reload of %s stopped: %s", name, result)
                        raise result
                    new_pids.append(result.pid)
            log.info("reload of %s done: pids %s", name, new_pids)
            return new_pids
        finally:
            self._reloading = False
