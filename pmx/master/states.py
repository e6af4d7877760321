"""The states of an app, and the one place that moves an app from one to the next.

Both the master and the daemon describe an app with ``AppState``; each has its own
table of the moves it allows (``MASTER_FLOW``, ``DAEMON_FLOW``), and a ``Lifecycle``
that performs them: it refuses a move its table does not allow (a bug, raised as
``IllegalTransition``) and logs every move it makes.

The master's flow::

    starting ── first worker in rotation ──► running ── boot failures in a row ──► errored
       │                                        │                                    │
       └───────────── stop / fatal error ───────┴────────────────────────────────────┘
                                                │
                                                ▼
                                 stopping ── no worker left ──► stopped

The daemon's adds the way back: a stopped or errored app can be started again, and a
restarted master keeps the app running.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping


class AppState(enum.Enum):
    STARTING = "starting"  # no worker has joined the rotation yet (master); no ready yet (daemon)
    RUNNING = "running"
    ERRORED = "errored"  # gave up respawning after repeated boot failures
    STOPPING = "stopping"
    STOPPED = "stopped"


Flow = Mapping[AppState, frozenset[AppState]]

_S, _R, _E, _G, _D = (AppState.STARTING, AppState.RUNNING, AppState.ERRORED,
                      AppState.STOPPING, AppState.STOPPED)

MASTER_FLOW: Flow = {
    _S: frozenset({_R, _G}),
    _R: frozenset({_E, _G}),
    _E: frozenset({_G}),
    _G: frozenset({_D}),
    _D: frozenset(),
}

DAEMON_FLOW: Flow = {  # (a stop may be asked for twice; a master errors, then fails)
    _S: frozenset({_R, _E, _G, _D}),
    _R: frozenset({_E, _G, _D}),
    _E: frozenset({_S, _E, _G, _D}),
    _G: frozenset({_G, _D}),
    _D: frozenset({_S, _D}),
}


class IllegalTransition(RuntimeError):
    """A move the flow does not allow: a bug in the code asking for it."""


class Lifecycle:
    """The state of one app and its moves. ``what`` names it in the log."""

    def __init__(self, what: str, flow: Flow, log: logging.Logger,
                 initial: AppState = AppState.STARTING) -> None:
        self.what = what
        self.flow = flow
        self.log = log
        self.state = initial

    def to(self, new: AppState, why: str = "") -> None:
        if new not in self.flow[self.state]:
            raise IllegalTransition(f"{self.what}: {self.state.value} -> {new.value} "
                                    "is not allowed")
        self.log.debug("%s: %s -> %s%s", self.what, self.state.value, new.value,
                       f" ({why})" if why else "")
        self.state = new

    def is_(self, *states: AppState) -> bool:
        return self.state in states
