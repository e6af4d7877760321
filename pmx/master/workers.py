"""The master's view of one worker process: its state machine and load counters."""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from pmx import channel
from pmx.config import AppConfig
from pmx.loadslot import Load, LoadSlot
from pmx.master.health import HealthCheck

log = logging.getLogger("pmx.master")


# least-busy's stall detection (Worker.busy)
STALL_MS = 10.0  # a loop that made no progress for longer is stalled
STALL_HALF_LIFE = 0.25  # seconds for the remembered stall time to halve


class WorkerState(enum.Enum):
    STARTING = "starting"  # spawned, importing the app / running lifespan startup
    READY = "ready"  # in rotation: receives connections
    DRAINING = "draining"  # out of rotation, finishing what it holds
    STOPPED = "stopped"  # exited after being told to stop
    FAILED = "failed"  # exited on its own: crash, boot error, killed


# The transitions a worker may take; anything else is a bug in the master.
_ALLOWED = {
    WorkerState.STARTING: {WorkerState.READY, WorkerState.DRAINING, WorkerState.FAILED},
    WorkerState.READY: {WorkerState.DRAINING, WorkerState.FAILED},
    WorkerState.DRAINING: {WorkerState.STOPPED, WorkerState.FAILED},
    WorkerState.STOPPED: set(),
    WorkerState.FAILED: set(),
}


@dataclass(eq=False)
class Worker:
    id: int
    process: subprocess.Popen[bytes]
    chan: socket.socket
    started_at: float
    state: WorkerState = WorkerState.STARTING
    ready_at: float | None = None
    sent: int = 0  # connection fds handed to this worker
    slot: LoadSlot | None = None  # the worker's live counters (pmx.loadslot)
    error: str = ""  # boot error text the worker sent before exiting
    exit_code: int | None = None
    pidfd: int = -1
    # least-busy's memory of stalls: decaying sum of the stalled milliseconds seen,
    # as of stall_level_at; and the stall being watched (its start, and how long it was
    # at the last look)
    stall_level: float = 0.0
    stall_level_at: float = 0.0
    stall_from: float = 0.0
    stall_seen_ms: float = 0.0
    # Set for a worker started to replace another (reload, recycling): if it fails
    # before it is ready, the one it replaces keeps serving and nothing is respawned.
    replacement: bool = False
    ready_waiter: asyncio.Future[None] | None = None
    health: HealthCheck = field(default_factory=HealthCheck)
    probe_number: int = 0
    probe_sent_at: float | None = None  # an unanswered probe
    last_probe_at: float = 0.0
    request_limit: int = 0  # replace after this many requests (0: never)
    memory: int = 0  # last RSS sample, children included
    memory_strikes: int = 0  # samples in a row over the limit
    drain_deadline: float = 0.0  # SIGKILL if still draining then
    metrics: dict[str, Any] = field(default_factory=dict)  # last METRICS report
    probe_waiters: list[asyncio.Future[bool]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def report(self) -> Load:
        return self.slot.read()[0] if self.slot is not None else Load()

    @property
    def load(self) -> int:
        """Connections handed over and not yet closed: those still in the channel plus
        those the worker has open."""
        if self.slot is None:
            return self.sent
        received, connections, _inflight, _requests, _active = self.slot.raw()
        return self.sent - received + connections

    @property
    def busy(self) -> float:
        """least-busy's score, about how long a connection handed over now would wait.

        ``load`` (connections handed over and not yet closed, read or not: a kept-alive
        one will send more requests), plus, while it has requests in flight, those
        requests and one per millisecond since its loop last made progress: a loop
        stuck in a synchronous call ages out of the running at once. Plus the
        stalled time seen recently: every millisecond of a stall (no progress for over
        STALL_MS with requests in flight) beyond its first STALL_MS is remembered,
        halving every STALL_HALF_LIFE seconds. An app that blocks its loop again and again is thus
        avoided between blocks too, when its next block would catch a connection
        handed over in the gap; a loop stuck all the time scores about 360 more than
        one that never is, one merely preempted now and then on a busy CPU little.
        """
        if self.slot is None:
            return self.sent
        received, connections, inflight, _requests, active_at = self.slot.raw()
        now = time.monotonic()
        score = float(self.sent - received + connections)
        level = self.stall_level
        if level:
            level *= 0.5 ** ((now - self.stall_level_at) / STALL_HALF_LIFE)
        if inflight:
            stalled_ms = (now - active_at) * 1000
            score += inflight + stalled_ms
            if stalled_ms > STALL_MS:
                if active_at != self.stall_from:  # a new stall: remember what is over STALL_MS
                    self.stall_from, self.stall_seen_ms = active_at, STALL_MS
                level += stalled_ms - self.stall_seen_ms
                self.stall_seen_ms = stalled_ms
        self.stall_level, self.stall_level_at = level, now
        return score + level

    @property
    def alive(self) -> bool:
        return self.exit_code is None

    def transition(self, new: WorkerState, why: str = "") -> None:
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(
                f"worker #{self.id}: {self.state.value} -> {new.value} is not allowed"
            )
        log.debug(
            "worker #%d (pid %d): %s -> %s%s",
            self.id, self.pid, self.state.value, new.value, f" ({why})" if why else "",
        )
        self.state = new


def launch(
    config: AppConfig, worker_id: int, now: float, *, replacement: bool = False,
    log_prefix: bool = False, live_load: bool = False,
) -> Worker:
    """Start ``python -m pmx.worker CHANNEL_FD SLOT_FD`` and send its hello."""
    parent, child = channel.socketpair()
    slot = LoadSlot.create()
    env = dict(os.environ)
    env.update(config.env)
    env["PYTHONUNBUFFERED"] = "1"
    env["PMX_WORKER_ID"] = str(worker_id)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "pmx.worker", str(child.fileno()), str(slot.fd)],
            pass_fds=[child.fileno(), slot.fd],
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except BaseException:
        slot.close()
        raise
    finally:
        child.close()
    hello = {"worker_id": worker_id, "config": config.to_dict(), "log_prefix": log_prefix,
             "live_load": live_load}
    parent.send(channel.encode_json(channel.HELLO, hello))
    parent.setblocking(False)
    limit = config.max_requests + random.randint(0, config.max_requests_jitter)
    return Worker(
        id=worker_id, process=process, chan=parent, started_at=now, replacement=replacement,
        slot=slot,
        health=HealthCheck(fall=config.health_fall, rise=config.health_rise,
                           replace_after=2 * config.health_fall),
        request_limit=limit if config.max_requests else 0,
    )


def describe_exit(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
