"""Worker process entry point: ``python -m pmx.worker FD SLOT_FD INBOX_FD``.

FD is this worker's end of the channel to its master (see pmx/channel.py), SLOT_FD its
load slot (pmx/loadslot.py), INBOX_FD its end of the socket pair the master sends
connection fds on. The worker reads its hello (id and config), imports the app, runs
lifespan startup, says ready, then serves every connection fd the master sends until
it is told to stop, the master goes away (EOF on the channel, or a new parent pid), or
it gets SIGTERM. In each case it first takes every fd still queued in its inbox, so no
handed-off connection is dropped, then shuts down through uvicorn's graceful path.

SIGINT is ignored: Ctrl-C in a terminal reaches the whole process group, and the
master decides how its workers stop.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import io
import os
import signal
import socket
import sys
import time
import traceback

from setproctitle import setproctitle

from pmx import channel
from pmx.config import AppConfig
from pmx.limits import raise_fd_limit
from pmx.loadslot import SETTLE, LoadSlot
from pmx.worker.app import AppLoadError, load
from pmx.worker.blocks import BlockWatch, SchedStat
from pmx.worker.bridge import UvicornBridge, connection_of
from pmx.worker.capacity import Capacity
from pmx.worker.handback import HandBack
from pmx.worker.hooks import RequestHooks
from pmx.worker.metrics import RequestMetrics, instrument
from pmx.worker.pool import Pool, pool_of

# While requests are in flight, a load-aware worker stamps its slot at least this often
# (seconds); a third of the master's STUCK (pmx.master.balancer), so that a loop that
# turns is never taken for a stuck one by the jitter of one stamp.
HEARTBEAT = 0.001
# While requests are in flight but none starts or ends and no connection comes (long
# polls, WebSockets, streams: the loop waits on I/O), each beat doubles the time to
# the next, up to this (seconds), and the slot says by how much the next stamp comes
# later than HEARTBEAT's, so the master does not take the quiet loop for a stuck one.
# Each beat wakes an otherwise sleeping process: measured on a small VM with 64 open
# long polls, 7 % of a core per worker at HEARTBEAT's rate, for nothing; at this cap,
# 1.6 % (uvicorn's workers: 0.2 %). The price: a quiet loop that then blocks is seen
# stuck up to 15 ms later than a busy one, about the delay a busy machine's scheduler
# gives any runnable process. Any start or end of a request, or a new connection, brings
# the heartbeat back to HEARTBEAT at once (unless the master sees the loop wait: below).
QUIET_BEAT = 0.016
# Where the master can see the loop wait in epoll (pmx.master.peek), stamps are not
# what tells it that a quiet loop still turns, so the heartbeat need not wake it: the
# beat stays at HEARTBEAT only while the loop was busy for at least this share of the
# time since the last beat (awake anyway, a beat costs no wake-up, and one write stands
# for many changes); otherwise it slows down as a quiet loop's does, and each change is
# published as it happens, at most once per HEARTBEAT, with no timer of its own.
# Measured with 128 kept-alive connections looping on a 100 ms ``await
# asyncio.sleep`` (2 workers, six alternating runs): 0.19-0.27 voluntary context
# switches per request in the workers against 0.35-0.46 when any change brought the
# beat back to HEARTBEAT (a change every 0.8 ms kept it there; round-robin's workers,
# which keep no slot up to date: 0.11-0.18), and 103-144 µs of CPU per request
# (median 118) against 113-133 (median 130; round-robin 78-113).
BUSY_SHARE = 0.5
# Seconds between two ticks of the idle loop: uvicorn's date header, the slot stamp that
# tells the master the loop turns (pmx.master.workers IDLE_STUCK), the parent check.
TICK = 0.1
SETTLE_TICKS = round(SETTLE / TICK)  # ticks between two looks for settled connections


class WorkerServer:
    def __init__(self, chan: socket.socket, bridge: UvicornBridge, slot: LoadSlot,
                 inbox: socket.socket | None = None) -> None:
        self.chan = chan
        # Connections come in ``F`` messages on the inbox, whose other end the master
        # keeps to take back what this worker has not read while its loop was stuck.
        self.inbox = inbox
        self.inbox_queued = channel.poller(inbox) if inbox is not None else None
        self.bridge = bridge
        self.slot = slot
        self.live = False  # publish every change (load-aware policy)
        self.parent = os.getppid()
        self.stopped: asyncio.Event | None = None
        self.leaving = False
        self.probes: set[asyncio.Task[None]] = set()
        self.metrics: RequestMetrics | None = None
        self.hooks = RequestHooks()
        self.beat: asyncio.TimerHandle | None = None
        self.interval = HEARTBEAT  # until the next beat
        self.stirred = False  # since the last beat: a request started or ended, ...
        self.seen = False  # the master sees the loop wait (pmx.master.peek)
        self.beat_mark = (0.0, 0.0)  # (monotonic, thread CPU time) at the last beat
        self.published = 0.0  # when the slot was last written (monotonic)
        self.shown_busy = False  # the slot last said: requests in flight
        self.settled = 0  # connections open at the last two looks (pmx.loadslot)
        self.blocks: BlockWatch | None = None  # least-busy: connections that block
        self.tasks = bridge.server.server_state.tasks  # requests in flight
        self.capacity = Capacity()
        self.handback = HandBack(chan, bridge, self.hooks)
        self.hand_back_on_stop = False  # the master's STOP asked for it
        self.interface = "asgi"
        self.pool = Pool()  # the app's thread pool (pmx.worker.pool), known once started

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        error = await self.bridge.startup()
        if error is not None:
            self._send(channel.encode_json(channel.ERROR, {"error": error}))
            return channel.BOOT_ERROR
        self.capacity = Capacity()  # the fds open now are the app's own
        self.pool = pool_of(self.interface)  # (the app may have resized it at startup)
        settle_heap()
        self.publish()  # the first stamp: the master sees a turning loop from the start
        self._send(channel.encode_json(channel.READY,
                                       {"pid": os.getpid(), "threads": self.pool.size}))
        loop.add_reader(self.chan.fileno(), self._on_channel)
        if self.inbox is not None:
            loop.add_reader(self.inbox.fileno(), self._on_inbox)
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        ticker = loop.create_task(self._tick())
        await self.stopped.wait()
        loop.remove_reader(self.chan.fileno())
        self._stop_inbox()
        await self.bridge.wait_adopted()
        handback = self.handback
        if self.hand_back_on_stop:  # kept-alive connections move on instead of closing
            handback.drain()
        else:  # a full stop: every response closes its connection; none moves
            handback.cancel()
            self.hooks.draining = True
        await self.bridge.drain(self.bridge.uv_config.timeout_keep_alive + 0.5,
                                handback.sweep if self.hand_back_on_stop else None)
        await handback.flushed()  # every handed-back fd is in the master's hands
        ticker.cancel()
        # uvicorn cancels what is still running after the graceful timeout, so an
        # orphaned worker (its master died) does not outlive that limit either.
        await self.bridge.shutdown()
        return 0

    def _on_inbox(self) -> None:
        if self.inbox is None:
            return
        for message, fds in channel.pending(self.inbox, channel.MAX_FROM_MASTER,
                                            self.inbox_queued):
            if not message:  # the master is gone (the channel says so too)
                self._stop_inbox()
                return
            self._adopt(message, fds)

    def _stop_inbox(self) -> None:
        if self.inbox is not None:
            self.bridge.loop.remove_reader(self.inbox.fileno())

    def _adopt(self, message: bytes, fds: list[int]) -> None:
        if self.stopped.is_set():  # type: ignore[union-attr]
            for fd in fds:
                os.close(fd)
            return
        bridge = self.bridge
        dropped = bridge.dropped
        for fd in fds:
            bridge.adopt(fd)
        lost = channel.fds_sent(message) - len(fds)
        if lost > 0:  # at the fd limit: the kernel dropped them
            bridge.dropped += lost
            self.capacity.lost(lost)
        # Each adopted connection is published when it opens (connection_made, the
        # next loop iteration); one dropped now, here.
        if self.live and bridge.dropped != dropped:
            self.publish()

    def _on_channel(self) -> None:
        for message, fds in channel.pending(self.chan, channel.MAX_FROM_MASTER):
            if self.stopped.is_set():  # type: ignore[union-attr]
                for fd in fds:
                    os.close(fd)
                return
            kind = message[:1]
            if kind == channel.FDS:
                self._adopt(message, fds)
                continue
            for fd in fds:
                os.close(fd)
            if kind == channel.RELEASE:
                self.handback.release(channel.decode_release(message))
            elif kind == channel.GATHER:
                self.handback.gather(channel.decode_release(message))
            elif kind == channel.PROBE:
                self._answer_probe(channel.decode_probe(message))
            if kind == channel.STOP or not message:
                self.hand_back_on_stop = message == channel.STOP_HANDING_BACK
                self._on_inbox()  # the master sent its last connections before the STOP
                self.stopped.set()  # type: ignore[union-attr]

    def _answer_probe(self, number: int) -> None:
        config = self.bridge.config
        if not config.health_path:
            self._send(channel.encode_probe_reply(number, True))
            return

        async def probe() -> None:
            healthy = await self.bridge.probe(config.health_path, config.health_timeout)
            self._send(channel.encode_probe_reply(number, healthy))

        task = asyncio.get_running_loop().create_task(probe())
        self.probes.add(task)
        task.add_done_callback(self.probes.discard)

    def _on_sigterm(self) -> None:
        # Ask the master to stop routing here; it answers STOP after its last fd.
        # If the master is gone, there is nothing left to wait for.
        if self.leaving:
            return
        self.leaving = True
        if not self._send(channel.LEAVING):
            self._on_channel()  # the master is gone: take what is queued, then stop
            self._on_inbox()
            self.stopped.set()  # type: ignore[union-attr]

    async def _tick(self) -> None:
        counter = 0
        while True:
            await asyncio.sleep(TICK)
            counter += 1
            await self.bridge.tick(counter)
            if counter % SETTLE_TICKS == 0:
                self.settled = self.bridge.settle()
            self.publish()  # the served count, and proof that an idle loop turns
            if counter % 10 == 0:
                self.capacity.refresh()
                limit = self.bridge.config.header_timeout
                if limit:
                    self.bridge.close_slow_heads(self.bridge.loop.time(), limit)
                if os.getppid() != self.parent:
                    self._on_channel()  # take what is queued, then stop
                    self._on_inbox()
                    self.stopped.set()  # type: ignore[union-attr]
                if self.metrics is not None:
                    self._send(channel.encode_json(channel.METRICS, self.metrics.to_dict()))

    def publish(self) -> None:
        """Write the load counters to the slot the master reads (pmx.loadslot)."""
        counters = self.bridge.counters()
        blocks = self.blocks
        capacity = self.capacity
        capacity.full(counters[1])  # logs when it changes
        taken = self.pool.taken(counters[2])
        if blocks is None:
            self.slot.put(*counters, 0, 0, capacity.connections, settled=self.settled,
                          threads_taken=taken)
        else:
            self.published = self.slot.put(
                *counters, blocks.count, blocks.holding, capacity.connections,
                len(blocks.blocked), blocks.calm_visits, blocks.blocking_visits,
                self.settled, taken, 0.0 if self.seen else self.interval - HEARTBEAT)
        self.shown_busy = counters[2] > 0

    def changed(self) -> None:
        """A connection or request came or went (load-aware policy).

        Becoming busy is published at once, before the request's handler runs and maybe
        blocks the loop; so is becoming idle. While requests are in flight a heartbeat
        stamps the slot every HEARTBEAT seconds, with the counts as they are then: the
        master tells a loop waiting on I/O (a long poll, a WebSocket) from one stuck in
        a synchronous call, which stops stamping, and a loop serving request after
        request does not write the slot twice per request. Idle, the heartbeat is
        cancelled: the loop sleeps until the next connection or tick, where a pending
        beat would wake it a millisecond after each request for nothing (a context
        switch, and with more workers than cores a cold cache for the next request).
        Quiet (requests in flight, nothing else happening), it slows down (QUIET_BEAT).
        """
        self.stirred = True
        busy = len(self.tasks) > 0
        if busy and self.shown_busy and self.beat is not None:
            if self.interval == HEARTBEAT:
                return  # the heartbeat publishes within HEARTBEAT
            if self.seen:  # slowed on a loop that mostly sleeps: no more than the beat's rate
                if time.monotonic() - self.published >= HEARTBEAT:
                    self.publish()
                return
            self.beat.cancel()  # it was slowed down: back to HEARTBEAT now
            self.beat = None
        self.interval = HEARTBEAT
        self.publish()
        beat = self.beat
        if busy:
            if beat is None:
                self.beat = self.bridge.loop.call_later(HEARTBEAT, self._beat)
                self.beat_mark = (time.monotonic(), time.thread_time())
        elif beat is not None:
            beat.cancel()
            self.beat = None

    def _beat(self) -> None:
        self.beat = None
        if self.tasks:
            if self.seen:
                now, cpu = time.monotonic(), time.thread_time()
                then, cpu_then = self.beat_mark
                self.beat_mark = (now, cpu)
                busy = cpu - cpu_then >= BUSY_SHARE * (now - then)
                self.interval = HEARTBEAT if busy else min(self.interval * 2, QUIET_BEAT)
            elif self.stirred:
                self.stirred = False
                self.interval = HEARTBEAT
            else:
                self.interval = min(self.interval * 2, QUIET_BEAT)
            self.publish()
            self.beat = self.bridge.loop.call_later(self.interval, self._beat)

    def _send(self, message: bytes) -> bool:
        try:
            self.chan.send(message)
            return True
        except OSError:
            return False


def settle_heap() -> None:
    """Collect once, then move every object alive now out of the garbage collector's
    sight (``gc.freeze``): the modules, the app and what its startup built live as long
    as the worker, yet each full collection would walk them all again, with the event
    loop stopped meanwhile (about 18 ms for the FastAPI example on this kind of machine;
    more for a large app), and a request arriving then waits it out. Frozen, a full
    collection walks only what serving created. (Garbage among the frozen objects would
    never be freed: hence the collection first.)"""
    gc.collect()
    gc.freeze()


class PrefixedStream(io.TextIOBase):
    """stdout/stderr that writes whole lines, each starting with ``[#N] ``, in one
    write() each: lines from several workers sharing a pipe never interleave."""

    def __init__(self, fd: int, prefix: str) -> None:
        self.fd = fd
        self.prefix = prefix.encode()
        self.pending = b""

    def write(self, text: str) -> int:
        lines = (self.pending + text.encode(errors="replace")).split(b"\n")
        self.pending = lines.pop()
        if lines:
            os.write(self.fd, b"".join(self.prefix + line + b"\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        if len(self.pending) > 65536:
            os.write(self.fd, self.prefix + self.pending + b"\n")
            self.pending = b""

    def fileno(self) -> int:
        return self.fd

    def writable(self) -> bool:
        return True


def format_exception(exc: BaseException) -> str:
    """The traceback without the import machinery's frames: only the app's own."""
    skip = (os.path.dirname(importlib.__file__), os.path.dirname(os.path.dirname(__file__)))
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(("<frozen", *skip))
        and not frame.filename.endswith("uvicorn/importer.py")
    ]
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def main() -> None:
    raise_fd_limit()
    chan = socket.socket(fileno=int(sys.argv[1]))
    try:
        hello = channel.recv_hello(chan)
    except (ValueError, EOFError) as exc:
        sys.exit(f"pmx worker: {exc}")
    config = AppConfig.from_dict(hello["config"])
    worker_id = int(hello["worker_id"])
    setproctitle(f"pmx: worker {config.name}#{worker_id}")
    if hello.get("log_prefix"):
        sys.stdout = PrefixedStream(1, f"[#{worker_id}] ")
        sys.stderr = PrefixedStream(2, f"[#{worker_id}] ")
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def fail(error: str) -> None:
        chan.send(channel.encode_json(channel.ERROR, {"error": error}))
        sys.exit(channel.BOOT_ERROR)

    try:
        app, interface = load(config)
    except AppLoadError as exc:
        fail(str(exc))
    except BaseException as exc:  # the app's own import-time exception, with its traceback
        fail(format_exception(exc))

    live = bool(hello.get("live_load"))
    metrics = RequestMetrics() if config.admin else None
    if metrics is not None:
        app = instrument(app, metrics)
    blocks = (BlockWatch(connection_of, sched=SchedStat())
              if hello.get("watch_blocks") else None)
    hooks = RequestHooks(blocks)
    app = hooks.wrap(app)
    bridge = UvicornBridge(config, app, worker_id, tag_logs=not hello.get("log_prefix"),
                           on_close=blocks.forget if blocks is not None else None)
    inbox = socket.socket(fileno=int(sys.argv[3])) if len(sys.argv) > 3 else None
    server = WorkerServer(chan, bridge, LoadSlot(int(sys.argv[2])), inbox)
    if live:
        # Every change is published (WorkerServer.changed). Without a load-aware policy
        # the ticker publishes ten times a second, for status and metrics.
        bridge.on_change(server.changed)
        if blocks is not None:
            blocks.on_change = server.publish  # now: a holding request is about to block
    server.live = live
    server.seen = live and blocks is not None and bool(hello.get("loop_seen"))
    server.metrics = metrics
    server.hooks = hooks
    server.handback = HandBack(chan, bridge, hooks, blocks)
    server.blocks = blocks
    server.interface = interface
    chan.setblocking(False)
    if inbox is not None:
        inbox.setblocking(False)
    sys.exit(bridge.run(server.run()))
