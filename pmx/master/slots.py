"""Which worker holds each slot: the one owner of every spawn.

A *slot* is a worker id, 1..N for an app that wants N workers. Every worker process the
master starts is started here, for a slot, and only when the slot can take it: at the
start, for a respawn after a crash, as a replacement (reload, recycling), or when scaling
up. A second worker for a slot that has one is refused (``SlotTaken``), whatever asked.

Each slot is in one ``SlotState``, moved only by ``Slots._move``, which logs the move::

               spawn                          spawn_replacement
    empty ─────────────────────► held ───────────────────────────────► replacing
    │ ▲ ▲                        │  ▲                                     │
    │ │ └── its worker leaves ───┘  └── the replacement takes over; or it ┘
    │ │     (drained or exited)         fails or is abandoned (the old one
    │ │                                 serves on); or the old one leaves
    │ │ the respawn is due              (the replacement holds the slot)
    ▼ │ (then spawn)
    waiting

A worker *leaves* its slot when it is drained (from then on it only finishes what it
holds) or when it exits. A slot left empty is the master's to refill (``schedule``, after
a backoff) or to leave empty (the app stops or errored). ``remove`` takes a slot away
(scaling down), handing back the worker that held it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pmx.master.workers import Worker

log = logging.getLogger("pmx.master")


class SlotState(enum.Enum):
    EMPTY = "empty"  # no worker, no respawn scheduled
    WAITING = "waiting"  # a respawn is scheduled (backoff timer)
    HELD = "held"  # one worker, starting or ready
    REPLACING = "replacing"  # its worker serves on while a replacement starts


_ALLOWED = {
    SlotState.EMPTY: {SlotState.HELD, SlotState.WAITING},
    SlotState.WAITING: {SlotState.HELD, SlotState.EMPTY},
    SlotState.HELD: {SlotState.REPLACING, SlotState.EMPTY},
    SlotState.REPLACING: {SlotState.HELD},
}


class SlotTaken(RuntimeError):
    """A spawn for a slot that has its worker (or its replacement) already."""


@dataclass(eq=False)
class Slot:
    id: int
    state: SlotState = SlotState.EMPTY
    worker: Worker | None = None  # the worker serving the slot (starting or ready)
    incoming: Worker | None = None  # its replacement, while it starts
    timer: asyncio.TimerHandle | None = None  # the scheduled respawn


# start(slot id, replacement?) -> the new worker, already watched by the master's loop.
Start = Callable[[int, bool], Worker]


class Slots:
    def __init__(self, start: Start) -> None:
        self._start = start
        self._slots: dict[int, Slot] = {}

    # ------------------------------------------------------------------ reading

    def ids(self) -> list[int]:
        return sorted(self._slots)

    def state(self, slot_id: int) -> SlotState | None:
        slot = self._slots.get(slot_id)
        return slot.state if slot is not None else None

    def holder(self, slot_id: int) -> Worker | None:
        slot = self._slots.get(slot_id)
        return slot.worker if slot is not None else None

    def holders(self) -> list[Worker]:
        """The workers serving a slot, by slot id."""
        return [s.worker for _, s in sorted(self._slots.items()) if s.worker is not None]

    def replacing(self) -> bool:
        return any(s.state is SlotState.REPLACING for s in self._slots.values())

    def waiting(self) -> list[int]:
        return [i for i, s in sorted(self._slots.items()) if s.state is SlotState.WAITING]

    def role(self, worker: Worker) -> str:
        """"holder", "incoming" (a replacement starting) or "" (it holds no slot)."""
        slot = self._slots.get(worker.id)
        if slot is None:
            return ""
        if slot.worker is worker:
            return "holder"
        return "incoming" if slot.incoming is worker else ""

    # ------------------------------------------------------------------ spawning

    def spawn(self, slot_id: int) -> Worker:
        """Start a worker for an empty (or waiting) slot, adding the slot if new."""
        slot = self._slots.setdefault(slot_id, Slot(slot_id))
        if slot.state not in (SlotState.EMPTY, SlotState.WAITING):
            raise SlotTaken(f"worker #{slot_id}: the slot is {slot.state.value}")
        if slot.state is SlotState.WAITING:
            self._cancel(slot)
            self._move(slot, SlotState.EMPTY, "respawn due")
        worker = self._start(slot_id, False)  # if it raises (OSError), the slot stays empty
        slot.worker = worker
        self._move(slot, SlotState.HELD, f"pid {worker.pid}")
        return worker

    def spawn_replacement(self, old: Worker) -> Worker:
        """Start the worker that will take over ``old``'s slot once it is ready."""
        slot = self._slots.get(old.id)
        if slot is None or slot.worker is not old or slot.state is not SlotState.HELD:
            state = slot.state.value if slot is not None else "gone"
            raise SlotTaken(f"worker #{old.id} (pid {old.pid}) cannot be replaced: "
                            f"the slot is {state}")
        new = self._start(old.id, True)
        slot.incoming = new
        self._move(slot, SlotState.REPLACING, f"pid {new.pid} replaces pid {old.pid}")
        return new

    def schedule(self, slot_id: int, delay: float, due: Callable[[int], None]) -> None:
        """Call ``due(slot_id)`` in ``delay`` seconds to refill an empty slot."""
        slot = self._slots.setdefault(slot_id, Slot(slot_id))
        self._move(slot, SlotState.WAITING, f"respawn in {delay:.1f} s")
        slot.timer = asyncio.get_running_loop().call_later(delay, due, slot_id)

    # ------------------------------------------------------------------ leaving

    def take_over(self, new: Worker) -> Worker | None:
        """The replacement ``new`` is ready: it holds the slot now. Returns the worker it
        replaces, which the caller drains (None if that one left already)."""
        slot = self._slots.get(new.id)
        if slot is None or slot.incoming is not new:
            return None  # it holds the slot already (the old one left), or nothing
        old, slot.worker, slot.incoming = slot.worker, new, None
        self._move(slot, SlotState.HELD, f"pid {new.pid} took over")
        return old

    def leave(self, worker: Worker) -> SlotState | None:
        """``worker`` stops serving its slot (drained, abandoned or exited). Its
        replacement, if one is starting, holds the slot from now on. Returns the slot's
        state afterwards, or None if the worker held no slot."""
        slot = self._slots.get(worker.id)
        if slot is None:
            return None
        if slot.incoming is worker:
            slot.incoming = None
            self._move(slot, SlotState.HELD, f"replacement pid {worker.pid} gone")
        elif slot.worker is worker:
            if slot.incoming is not None:
                slot.worker, slot.incoming = slot.incoming, None
                self._move(slot, SlotState.HELD,
                           f"pid {worker.pid} gone; pid {slot.worker.pid} holds it")
            else:
                slot.worker = None
                self._move(slot, SlotState.EMPTY, f"pid {worker.pid} gone")
        else:
            return None
        return slot.state

    def remove(self, slot_id: int) -> Worker | None:
        """Take the slot away (scaling down); returns the worker that held it."""
        slot = self._slots[slot_id]
        if slot.incoming is not None:
            raise SlotTaken(f"worker #{slot_id}: cannot remove a slot being replaced")
        del self._slots[slot_id]
        self._cancel(slot)
        return slot.worker

    def cancel_all(self) -> None:
        """The app stops: no slot is refilled any more."""
        for slot in self._slots.values():
            if slot.state is SlotState.WAITING:
                self._move(slot, SlotState.EMPTY, "stopping")
            self._cancel(slot)

    def _cancel(self, slot: Slot) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None

    def _move(self, slot: Slot, new: SlotState, why: str) -> None:
        if new not in _ALLOWED[slot.state]:
            raise SlotTaken(f"slot #{slot.id}: {slot.state.value} -> {new.value} "
                            "is not allowed")
        log.debug("slot #%d: %s -> %s (%s)", slot.id, slot.state.value, new.value, why)
        slot.state = new
