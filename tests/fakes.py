"""Fake workers for running a ``Master`` in-process (tests/test_master_unit.py).

``Fleet`` is a launcher (``pmx.master.workers.Launcher``): instead of a process it
starts a ``FakeWorker`` that lives on the test's own event loop. The master talks to
it exactly as to a real one, over a real channel socket pair and a real load slot;
its exit is announced on a pipe that stands in for the pidfd. A fake worker answers
probes and stops on STOP the way a real one does; the test decides when it becomes
ready, crashes, fails to boot, hangs, or is told to stop by someone else.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from pmx import channel
from pmx.config import AppConfig
from pmx.loadslot import LoadSlot
from pmx.master.health import HealthCheck
from pmx.master.workers import Worker


class FakeProcess:
    """What the master uses of a process: pid, poll, send_signal, kill, wait."""

    def __init__(self, pid: int, worker: FakeWorker) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.worker = worker
        self.signals: list[int] = []
        self.exit_r, self.exit_w = os.pipe()

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        self.signals.append(sig)
        self.worker.on_signal(sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            raise AssertionError(f"fake pid {self.pid} waited for while running")
        return self.returncode

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            os.write(self.exit_w, b"x")  # the "pidfd" becomes readable
            os.close(self.exit_w)


class FakeWorker:
    def __init__(self, fleet: Fleet, worker_id: int, pid: int, replacement: bool) -> None:
        self.fleet = fleet
        self.id = worker_id
        self.replacement = replacement
        self.chan, self.master_end = channel.socketpair()
        self.chan.setblocking(False)
        self.master_end.setblocking(False)
        self.slot = LoadSlot.create()
        self.process = FakeProcess(pid, self)
        self.hung = False  # a frozen loop: no stamp, no probe answered, STOP not read
        self.stopped = False  # got STOP
        self.ready_sent = False
        self.requests = 0
        self.slot.put(0, 0, 0, 0, 0)  # a real worker stamps its slot before READY
        loop = asyncio.get_running_loop()
        loop.add_reader(self.chan.fileno(), self._on_message)
        self.ticker = loop.create_task(self._tick())

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def ready(self) -> None:
        self.ready_sent = True
        self._send(channel.encode_json(channel.READY, {"pid": self.pid}))

    def fail_to_boot(self, error: str = "ImportError: no module named 'x'") -> None:
        self._send(channel.encode_json(channel.ERROR, {"error": error}))
        self.exit(channel.BOOT_ERROR)

    def leave(self) -> None:
        """SIGTERM from outside: a real worker tells its master it is leaving."""
        self._send(channel.LEAVING)

    def served(self, requests: int) -> None:
        self.requests = requests
        self.slot.put(0, 0, 0, requests, 0)

    async def _tick(self) -> None:
        """An idle loop stamps its slot every 0.1 s (pmx.worker.process TICK)."""
        while self.running:
            await asyncio.sleep(0.1)
            if not self.hung and self.running:
                self.slot.put(0, 0, 0, self.requests, 0)

    def exit(self, code: int) -> None:
        if not self.running:
            return
        loop = asyncio.get_running_loop()
        self.ticker.cancel()
        try:
            loop.remove_reader(self.chan.fileno())
        except ValueError:
            pass
        self.chan.close()
        self.process.exit(code)

    def on_signal(self, sig: int) -> None:
        if sig == signal.SIGKILL:
            self.exit(-signal.SIGKILL)
        elif sig == signal.SIGTERM and not self.hung:
            self.exit(0)

    def _send(self, message: bytes) -> None:
        if self.running:
            self.chan.send(message)

    def _on_message(self) -> None:
        if self.hung:
            return
        for message, fds in channel.pending(self.chan, 4096):
            for fd in fds:
                os.close(fd)
            kind = message[:1]
            if kind == channel.PROBE:
                self._send(channel.encode_probe_reply(channel.decode_probe(message), True))
            elif kind == channel.STOP:
                self.stopped = True
                if self.fleet.exit_on_stop:
                    self.exit(0)
                return
            elif not message:
                self.exit(0)
                return


class Fleet:
    """The launcher: starts fake workers and keeps every one it started, in order."""

    def __init__(self, auto_ready: bool = True) -> None:
        self.auto_ready = auto_ready  # a new worker is ready at once
        self.exit_on_stop = True
        self.started: list[FakeWorker] = []
        self.workers: list[Worker] = []  # the master's side of each
        self.failures: list[OSError] = []  # raised by the next launches, in order
        self.pids = itertools.count(100_001)
        self.on_launch: Callable[[FakeWorker], None] | None = None

    def __call__(
        self, config: AppConfig, worker_id: int, now: float, *, replacement: bool = False,
        log_prefix: bool = False, live_load: bool = False, watch_blocks: bool = False,
    ) -> Worker:
        if self.failures:
            raise self.failures.pop(0)
        fake = FakeWorker(self, worker_id, next(self.pids), replacement)
        self.started.append(fake)
        if self.auto_ready:
            asyncio.get_running_loop().call_soon(fake.ready)
        if self.on_launch is not None:
            self.on_launch(fake)
        worker = Worker(
            id=worker_id, process=fake.process, chan=fake.master_end, started_at=now,
            replacement=replacement, slot=LoadSlot(os.dup(fake.slot.fd)),
            pidfd=fake.process.exit_r,
            health=HealthCheck(fall=config.health_fall, rise=config.health_rise,
                               replace_after=2 * config.health_fall),
            request_limit=config.max_requests,
        )
        self.workers.append(worker)
        return worker

    def running(self, worker_id: int | None = None) -> list[FakeWorker]:
        return [f for f in self.started
                if f.running and (worker_id is None or f.id == worker_id)]

    def of(self, pid: int) -> FakeWorker:
        return next(f for f in self.started if f.pid == pid)

    def close(self) -> None:
        """Release what the master did not (it closes what it reaps)."""
        for fake in self.started:
            fake.exit(0)
            fake.slot.close()
        for worker in self.workers:
            if worker.pidfd >= 0:
                os.close(worker.pidfd)
                worker.pidfd = -1
            if worker.slot is not None:
                worker.slot.close()
                worker.slot = None
            worker.chan.close()


async def until(condition: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Wait on the loop until ``condition()`` is truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{what or condition}")
        await asyncio.sleep(0.005)


def events_of(master: Any) -> list[tuple[str, dict[str, Any]]]:
    """Subscribe to the master's events; the list fills as they come."""
    seen: list[tuple[str, dict[str, Any]]] = []
    master.subscribe(lambda kind, data: seen.append((kind, json.loads(json.dumps(data)))))
    return seen
