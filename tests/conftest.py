"""Helpers for tests that run pmx for real: processes, sockets on 127.0.0.1, signals.

``pmx_run`` starts ``pmx run`` as a subprocess in its own session (so its process group
holds the master and every worker) and always kills that group at teardown, whatever
the test did. Waiting is always on a condition with a deadline (``wait_for``).
"""

from __future__ import annotations

import collections
import http.client
import itertools
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
PMX = [sys.executable, "-m", "pmx"]
T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except (OSError, http.client.HTTPException):
            result = None  # type: ignore[assignment]
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _ephemeral_low() -> int:
    """The lowest port the kernel gives an outgoing connection (or a bind to port 0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


_EPHEMERAL_LOW = _ephemeral_low()
_handed_out: set[int] = set()
_ports = random.Random(os.getpid())


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now, for a server a test starts
    later. Below the kernel's ephemeral range where there is room: every outgoing
    connection of the suite (and of the servers under test) takes its local port from
    that range, and one that took this port before the server binds it would make the
    bind fail (seen under load: "address already in use"). Never the same port twice
    in a session."""
    while True:
        if _EPHEMERAL_LOW > 12000:
            port = _ports.randrange(10000, _EPHEMERAL_LOW)
        else:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def get(port: int, path: str = "/pid", timeout: float = 10.0) -> tuple[int, str]:
    """One request on a new connection (Connection: close)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def established(pids: Iterable[int], port: int) -> int:
    """Open connections to ``port`` held by the processes ``pids``."""
    count = 0
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections("tcp")
        except psutil.NoSuchProcess:
            continue
        count += sum(
            1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
        )
    return count


def listen_queue(port: int) -> int:
    """Connections waiting in the kernel for the master to accept them."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no listening socket on port {port}")


class Hold:
    """A request to /hold: it blocks its worker's loop from ``started()`` until
    ``release()``."""

    def __init__(self, port: int, base: Path) -> None:
        self.base = str(base)
        self.result: list[str] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(get(port, f"/hold?file={self.base}", 40)[1]))
        self.thread.start()
        wait_for(lambda: os.path.exists(self.base + ".held"), 10, "the hold to start")
        self.started = time.monotonic()

    # The shortest block: a worker does not count the time its loop waited for a CPU
    # as blocking (pmx.worker.blocks), and on a busy machine most of a short block's
    # wall time may be that wait (the app polls in 2 ms sleeps).
    SHORTEST = 0.1

    def release(self) -> str:
        """End the block, once it has lasted SHORTEST; the pid of the worker that was
        blocked."""
        wait_for(lambda: time.monotonic() >= self.started + self.SHORTEST, 5,
                 "the block to last")
        open(self.base + ".go", "w").close()
        self.thread.join(40)
        return self.result[0]


class SteadyLoad:
    """Client threads sending requests until stopped, ``clients`` on a new connection
    per request and ``keep_alive`` reusing theirs (reconnecting only when the server
    says ``Connection: close``, as HTTP clients do). Every failure is kept, and every
    response body is counted. ``with SteadyLoad(port) as load: ...``"""

    def __init__(self, port: int, path: str = "/pid", clients: int = 4,
                 keep_alive: int = 0, distinct: bool = False) -> None:
        """``distinct``: each new-connection request asks for a path of its own
        (``path/N``), as clients of an app with many endpoints."""
        self.port, self.path, self.distinct = port, path, distinct
        self._numbers = itertools.count()
        self.failures: list[BaseException] = []
        self.bodies: collections.Counter[str] = collections.Counter()
        self.served = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]
        self._threads += [threading.Thread(target=self._keep_alive) for _ in range(keep_alive)]

    def _count(self, status: int, body: str) -> None:
        assert status == 200, status
        self.bodies[body] += 1
        self.served += 1

    def _client(self) -> None:
        while not self._stop.is_set():
            try:
                path = f"{self.path}/{next(self._numbers)}" if self.distinct else self.path
                self._count(*get(self.port, path, timeout=15))
            except Exception as exc:  # noqa: BLE001 - any failure counts
                self.failures.append(exc)

    def _keep_alive(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        while not self._stop.is_set():
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                self._count(response.status, response.read().decode())
            except Exception as exc:  # noqa: BLE001
                self.failures.append(exc)
                conn.close()
        conn.close()

    def wait_served(self, more: int, timeout: float = 10.0) -> None:
        target = self.served + more
        wait_for(lambda: self.served >= target, timeout, f"{more} more requests served")

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count for killpg; only living members matter.
    return any(
        p.info["status"] != psutil.STATUS_ZOMBIE
        for p in psutil.process_iter(["pid", "status"])
        if _pgid(p.info["pid"]) == pgid
    )


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


class PmxRun:
    """A running ``pmx run`` and what the tests ask of it."""

    def __init__(self, args: list[str], port: int, env: dict[str, str], log: Path,
                 nofile: int = 0, cpus: set[int] | None = None) -> None:
        self.port = port
        self.log_path = log
        self.log_file = open(log, "wb")  # noqa: SIM115

        def limit() -> None:  # in the child: its limit on open files, its CPUs
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.proc = subprocess.Popen(
            [*PMX, "run", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limit if nofile or cpus else None,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []

    def worker_pids(self) -> set[int]:
        return {p.pid for p in self.workers()}

    def wait_serving(self, workers: int, timeout: float = 20.0) -> None:
        """Until the log says ``workers`` workers are ready and a request succeeds."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"pmx exited early ({self.proc.returncode}):\n{self.log()}")
            return self.log().count(" ready in ") >= workers and get(self.port, "/health")[0] == 200

        wait_for(ready, timeout, f"{workers} ready workers\n{self.log()}")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def holds_connections(self) -> int:
        """Connections to the app's port currently held by its workers."""
        return established((w.pid for w in self.workers()), self.port)

    def wait_exit(self, timeout: float = 40.0) -> int:
        return self.proc.wait(timeout)

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.log_file.close()


@pytest.fixture
def pmx_run(tmp_path: Path) -> Iterator[Callable[..., PmxRun]]:
    started: list[PmxRun] = []

    def start(
        *args: str, port: int | None = None, env: dict[str, str] | None = None,
        bind: str | None = None, nofile: int = 0, cpus: set[int] | None = None,
    ) -> PmxRun:
        port = port or free_port()
        full_env = dict(os.environ)
        full_env.update(env or {})
        run = PmxRun(
            [*args, "--bind", bind or f"127.0.0.1:{port}"], port, full_env,
            tmp_path / f"pmx-{len(started)}.log", nofile, cpus,
        )
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill_group()


def run_pmx(*args: str, timeout: float = 30.0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a pmx command to completion in its own session; return the result."""
    return subprocess.run(
        [*PMX, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, start_new_session=True, **kwargs,
    )


class Pmx:
    def __init__(self, home) -> None:
        self.home = home
        self.env = {**os.environ, "PMX_HOME": str(home)}

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*PMX, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def status(self) -> dict:
        return json.loads(self.ok("status", "--json"))

    def app(self, name: str) -> dict:
        return next(a for a in self.status()["apps"] if a["name"] == name)

    def daemon_pid(self) -> int | None:
        try:
            return int((self.home / "pmx.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def titles(self) -> list[str]:
        """The process titles ("pmx: worker web#1"...) of the live ones among
        ``processes()``; a zombie (exited, not yet reaped) has none and is left out."""
        titles = []
        for proc in self.processes():
            try:
                titles.append(" ".join(proc.cmdline()))
            except psutil.Error:
                pass
        return titles

    def processes(self) -> list[psutil.Process]:
        """Every pmx process (daemon, masters, workers) of this home's daemon."""
        pid = self.daemon_pid()
        if pid is None:
            return []
        try:
            daemon = psutil.Process(pid)
            return [daemon, *daemon.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


@pytest.fixture
def pmx(tmp_path):
    tool = Pmx(tmp_path / "home")
    yield tool
    procs = tool.processes()
    tool("kill", timeout=60)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def ready_pids(app: dict) -> set[int]:
    return {w["pid"] for w in app["workers"] if w["state"] == "ready"}
