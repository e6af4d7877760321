"""The master's view of one worker process: its state machine and load counters."""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import signal
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from pmx import channel
from pmx.config import AppConfig
from pmx.errors import BootError
from pmx.loadslot import Load, LoadSlot
from pmx.master.balancer import STUCK, Snapshot, snapshot_of
from pmx.master.health import HealthCheck
from pmx.master.peek import LoopPeek

log = logging.getLogger("pmx.master")

# An idle worker stamps its slot every 0.1 s (pmx.worker.process TICK); one whose stamp
# is older than this (seconds) is not turning: frozen, or stuck outside any request.
IDLE_STUCK = 0.25
# An fd unread for longer than this (seconds) means the loop is stuck. A loop with a
# request in flight shows a stall within STUCK by its missed heartbeats; one without
# has nothing that can hold it, and an fd it has not read yet mostly waits for the
# kernel to give the process a CPU, which under load takes a few milliseconds (the
# scheduler's period is 6 to 24 ms). Skipping it for that would unbalance a burst of
# long-lived connections for a wait that short.
UNREAD_STUCK = 0.025


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


class Process(Protocol):
    """What the master uses of a worker's process (a ``subprocess.Popen``)."""

    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@dataclass(eq=False)
class Worker:
    id: int
    process: Process
    chan: socket.socket
    started_at: float
    # The fd inbox: connections go to the worker over their own socket pair, and the
    # master keeps both ends, so that it can take back what the worker has not read
    # (``reclaim``). Without one (test fakes), connections go over ``chan``.
    inbox: socket.socket | None = None
    inbox_back: socket.socket | None = None  # the worker's end
    state: WorkerState = WorkerState.STARTING
    ready_at: float | None = None
    sent: int = 0  # connection fds handed to this worker
    moved: int = 0  # kept-alive connections it handed back, handed on to others
    reclaimed: int = 0  # connections left unread while its loop was stuck, handed to others
    slot: LoadSlot | None = None  # the worker's live counters (pmx.loadslot)
    error: str = ""  # boot error text the worker sent before exiting
    threads: int = 0  # its app's thread pool (WSGI), as its READY said; 0: none
    pidfd: int = -1  # readable once the process has exited (-1: none, poll on each tick)
    # Whether its loop waits in epoll, asked of the kernel (pmx.master.peek): where
    # there is one, the worker stamps its slot only as often as it is awake anyway.
    peek: LoopPeek | None = None
    waiting_seen: float = 0.0  # when the peek last saw its loop wait
    # (``sent`` after a hand-off, when) for hand-offs the worker has not read all of
    handoffs: deque[tuple[int, float]] = field(default_factory=deque)
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
    def full(self) -> bool:
        """It holds as many connections as its fd budget allows (pmx.worker.capacity):
        it must be handed no more. Counted with ``sent``, which the master keeps, so a
        burst is stopped at the budget even before the worker reads anything."""
        if self.slot is None:
            return False
        received, connections, _i, _r, _b, _h, budget, *_rest = self.slot.raw()
        return 0 < budget <= self.sent - received + connections

    @property
    def load(self) -> int:
        """Connections handed over and not yet closed: those still in its inbox plus
        those the worker has open."""
        if self.slot is None:
            return self.sent
        received, connections = self.slot.raw()[:2]
        return self.sent - received + connections

    def handed(self, count: int, now: float) -> None:
        """``count`` connection fds were just sent to this worker."""
        self.sent += count
        self.handoffs.append((self.sent, now))

    def reclaim(self) -> list[int]:
        """Take back the connection fds still unread in the worker's inbox (all of them:
        the worker may be reading some at the same moment; each message goes to one
        reader, so nothing is lost or taken twice)."""
        if self.inbox_back is None:
            return []
        taken: list[int] = []
        count = 0
        for message, fds in channel.pending(self.inbox_back, channel.MAX_FROM_MASTER):
            if message[:1] == channel.FDS:
                count += channel.fds_sent(message)  # those the kernel dropped count too
                taken.extend(fds)
            else:
                for fd in fds:
                    os.close(fd)
            if not message:
                break
        if count:
            self.sent -= count
            handoffs = self.handoffs  # the reclaimed ones are the last ones sent
            while handoffs and handoffs[-1][0] > self.sent:
                handoffs.pop()
        return taken

    def snapshot(self, now: float) -> Snapshot:
        """The worker's state for least-busy (pmx.master.balancer): its load, requests
        in flight, how long its loop has been stuck, its connections that block, and
        its app's thread pool.

        Stuck: with requests in flight, the time since its last stamp (a turning loop
        stamps every HEARTBEAT), less the slack it published with that stamp (a quiet
        one stamps less often, and says so), or since the master last saw its loop
        wait in epoll, asked of the kernel when the stamp is older than STUCK (a worker
        the master can see that way stamps only while it is awake anyway); idle, the
        time since its last stamp past IDLE_STUCK (it stamps every TICK); with an fd
        unread in its inbox for over UNREAD_STUCK, the time since it was sent."""
        if self.slot is None:
            return Snapshot(self.sent, 0, 0.0, 0, threads=self.threads)
        (received, connections, inflight, _requests, blockers, holding, budget, blocked,
         _calm_visits, _blocking_visits, _settled, taken, slack, active_at) = self.slot.raw()
        stuck = now - active_at - slack
        if inflight and stuck > STUCK and self.peek is not None:
            if now - self.waiting_seen > STUCK and self.peek.waiting():
                self.waiting_seen = now
            stuck = min(stuck, now - self.waiting_seen)
        elif not inflight and stuck < IDLE_STUCK:
            stuck = 0.0
        handoffs = self.handoffs
        while handoffs and handoffs[0][0] <= received:
            handoffs.popleft()
        if handoffs and now - handoffs[0][1] > UNREAD_STUCK and now - handoffs[0][1] > stuck:
            stuck = now - handoffs[0][1]
        load = self.sent - received + connections
        return snapshot_of((load, inflight, stuck, blockers, 0 < budget <= load, holding,
                            self.threads, taken, blocked))

    def signal(self, sig: int) -> None:
        try:
            self.process.send_signal(sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL, and wait for the exit (5 s at most)."""
        self.signal(signal.SIGKILL)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            log.error("worker #%d (pid %d) did not die after SIGKILL", self.id, self.pid)

    def close(self) -> None:
        """Release the master's side of an exited worker: channel, load slot, pidfd."""
        self.chan.close()
        for end in (self.inbox, self.inbox_back):
            if end is not None:
                end.close()
        if self.slot is not None:
            self.slot.close()
            self.slot = None
        if self.peek is not None:
            self.peek.close()
            self.peek = None
        if self.pidfd >= 0:
            asyncio.get_running_loop().remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1

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


class Launcher(Protocol):
    """Starts a worker process for slot ``worker_id`` (``launch``; tests hand the master
    one that starts fake workers). Raises OSError when the process cannot be started."""

    def __call__(
        self, config: AppConfig, worker_id: int, now: float, *, replacement: bool = False,
        log_prefix: bool = False, live_load: bool = False, watch_blocks: bool = False,
    ) -> Worker: ...


# Without pidfds (macOS) exits are found by polling on every tick.
HAS_PIDFD = hasattr(os, "pidfd_open") and sys.platform.startswith("linux")


def launch(
    config: AppConfig, worker_id: int, now: float, *, replacement: bool = False,
    log_prefix: bool = False, live_load: bool = False, watch_blocks: bool = False,
) -> Worker:
    """Start ``python -m pmx.worker CHANNEL_FD SLOT_FD INBOX_FD`` and send its hello."""
    parent, child = channel.socketpair()
    inbox, inbox_back = channel.socketpair()
    slot = LoadSlot.create()
    env = config.child_env()
    env["PYTHONUNBUFFERED"] = "1"
    env["PMX_WORKER_ID"] = str(worker_id)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "pmx.worker", str(child.fileno()), str(slot.fd),
             str(inbox_back.fileno())],
            pass_fds=[child.fileno(), slot.fd, inbox_back.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except BaseException:
        slot.close()
        parent.close()
        inbox.close()
        inbox_back.close()
        raise
    finally:
        child.close()
    peek = LoopPeek.open(process.pid) if watch_blocks else None
    hello = {"worker_id": worker_id, "config": config.to_child(), "log_prefix": log_prefix,
             "live_load": live_load, "watch_blocks": watch_blocks,
             "loop_seen": peek is not None}
    channel.send_hello(parent, hello)
    parent.setblocking(False)
    inbox.setblocking(False)
    inbox_back.setblocking(False)
    limit = config.max_requests + random.randint(0, config.max_requests_jitter)
    # Readable when the process exits: reaping without SIGCHLD, which uvloop keeps.
    pidfd = os.pidfd_open(process.pid) if HAS_PIDFD else -1
    return Worker(
        id=worker_id, process=process, chan=parent, started_at=now, replacement=replacement,
        inbox=inbox, inbox_back=inbox_back, slot=slot, pidfd=pidfd, peek=peek,
        health=HealthCheck(fall=config.health_fall, rise=config.health_rise,
                           replace_after=2 * config.health_fall),
        request_limit=limit if config.max_requests else 0,
    )


def boot_error(app: str, worker: Worker, code: int) -> BootError:
    """Why ``worker`` of ``app`` exited before it was ready: the last line of the error
    it sent, with the tail of its traceback as the detail."""
    error = worker.error.strip()
    if not error:
        return BootError(
            f'app "{app}" failed to start: '
            f"worker exited before it was ready ({describe_exit(code)})."
        )
    lines = error.splitlines()
    detail = "\n".join(lines[-12:]) if len(lines) > 1 else ""
    return BootError(f'app "{app}" failed to start: {lines[-1]}', detail)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
