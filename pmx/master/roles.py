"""What each part of the master is handed: one narrow interface per part.

The master (``pmx.master.arbiter.Master``) holds the app's state and runs its loop; the
parts that act on it (reloader, scaler, supervisor, watcher, admin endpoint, control
server, status snapshot) import nothing of it. Each is handed the master as one of the
``Protocol`` s below, which name the few things that part reads and the few methods it
calls, and it changes the master only through those methods. ``Master`` is wired to its
parts in one place, its constructor (and ``serve`` for the parts that need the loop).

This module imports only plain data and the slot table, so every part can import it and
no import runs back into ``arbiter``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from pmx.config import AppConfig, BindAddress
from pmx.master.history import History
from pmx.master.sampler import Sampler
from pmx.master.slots import Slots
from pmx.master.states import AppState
from pmx.master.workers import Worker


class App(Protocol):
    """What every part reads: the app's config and state."""

    @property
    def config(self) -> AppConfig: ...
    @property
    def state(self) -> AppState: ...


class Fleet(App, Protocol):
    """An app and its live workers."""

    @property
    def live(self) -> list[Worker]: ...


class Replacing(App, Protocol):
    """The reloader's view (pmx.master.reload)."""

    @property
    def slots(self) -> Slots: ...

    def retire(self, worker: Worker, reason: str, detail: str) -> None:
        """Record why ``worker`` leaves, then drain it."""

    def abandon(self, worker: Worker, why: str) -> None:
        """Kill a new worker that will not be used."""


class Scaling(App, Protocol):
    """The scaler's view (pmx.master.scaling)."""

    @property
    def slots(self) -> Slots: ...

    def retire(self, worker: Worker, reason: str, detail: str) -> None: ...

    def fill(self, slot_id: int) -> None:
        """Start a worker in an empty slot (or schedule one if starting fails)."""

    def set_wanted(self, workers: int) -> None:
        """The app wants ``workers`` workers from now on."""


class Replacer(Protocol):
    """What the supervisor and the watcher ask of the reloader."""

    @property
    def busy(self) -> bool:
        """A reload is under way."""

    async def replace(self, old: Worker, reason: str) -> Worker: ...

    def start_reload(self, parallel: int = 1) -> asyncio.Task[list[int]]: ...


class Supervised(Fleet, Protocol):
    """The supervisor's view (pmx.master.supervise)."""

    @property
    def slots(self) -> Slots: ...

    def clock(self) -> float: ...

    def probe(self, worker: Worker) -> None: ...

    def record_probe(self, worker: Worker, healthy: bool) -> None: ...

    def record_stall(self, worker: Worker, seconds: float) -> None:
        """``worker``, idle, has not stamped its load slot for ``seconds``."""


class Watched(App, Protocol):
    """The file watcher's view (pmx.master.watch): config and state alone."""


class Observed(Fleet, Protocol):
    """What the status snapshot reads (pmx.master.status)."""

    @property
    def address(self) -> BindAddress: ...
    @property
    def admin_address(self) -> str: ...
    @property
    def policy_name(self) -> str: ...
    @property
    def balancing(self) -> str: ...
    @property
    def history(self) -> History: ...
    @property
    def sampler(self) -> Sampler: ...
    @property
    def connections_moved(self) -> int: ...

    def clock(self) -> float: ...


class Administered(Fleet, Protocol):
    """The admin endpoint's view (pmx.master.admin)."""

    @property
    def history(self) -> History: ...
    @property
    def sampler(self) -> Sampler: ...

    def in_rotation(self, worker: Worker) -> bool: ...

    def rotation_size(self) -> int: ...

    def probe(self, worker: Worker) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


class Controlled(Protocol):
    """The control server's view (pmx.master.control)."""

    def subscribe(self, subscriber: Callable[[str, dict[str, Any]], None]) -> None:
        """Have ``subscriber(kind, data)`` called for each event the master reports."""

    def snapshot(self) -> dict[str, Any]: ...

    def scale(self, workers: int) -> None: ...

    def start_reload(self, parallel: int = 1) -> asyncio.Task[list[int]]: ...

    def begin_stop(self, why: str) -> None: ...
