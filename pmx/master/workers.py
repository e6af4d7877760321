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
from dataclasses import dataclass, field
from typing import Any

from pmx import channel
from pmx.channel import Load
from pmx.config import AppConfig
from pmx.master.health import HealthCheck

log = logging.getLogger("pmx.master")


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
    report: Load = field(default_factory=Load)
    error: str = ""  # boot error text the worker sent before exiting
    exit_code: int | None = None
    pidfd: int = -1
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
    def load(self) -> int:
        """Connections handed over and not yet closed: those still in the channel plus
        those the worker last reported open."""
        return self.sent - self.report.received + self.report.connections

    @property
    def busy(self) -> int:
        """Requests in flight plus connections not yet read from the channel."""
        return self.sent - self.report.received + self.report.inflight

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
    report_changes: bool = False, log_prefix: bool = False,
) -> Worker:
    """Start ``python -m pmx.worker FD`` with its end of a new channel, send its hello."""
    parent, child = channel.socketpair()
    env = dict(os.environ)
    env.update(config.env)
    env["PYTHONUNBUFFERED"] = "1"
    env["PMX_WORKER_ID"] = str(worker_id)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "pmx.worker", str(child.fileno())],
            pass_fds=[child.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
    finally:
        child.close()
    hello = {
        "worker_id": worker_id,
        "config": config.to_dict(),
        "report_changes": report_changes,
        "log_prefix": log_prefix,
    }
    parent.send(channel.encode_json(channel.HELLO, hello))
    parent.setblocking(False)
    limit = config.max_requests + random.randint(0, config.max_requests_jitter)
    return Worker(
        id=worker_id, process=process, chan=parent, started_at=now, replacement=replacement,
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
