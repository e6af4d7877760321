"""Load generators: wrk with bench/count.lua, single GETs, the /leak client and the
burst of keep-alive connections of the connection-spread family.

All of them count which worker answered from the ``x-pid`` header the bench apps send.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import subprocess
import threading
import time
from typing import Any

from bench.procs import BENCH, HOST, BenchError, forget, kill_tree, spawn

COUNT_LUA = BENCH / "count.lua"
WRK_TIMEOUT = "5s"


def wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    except OSError:
        return "not found"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].split(" Copyright")[0] if text else "unknown"


class Wrk:
    """One wrk process running bench/count.lua; ``result()`` parses its summary.

    ``script_args`` are count.lua's: ``close`` (a new connection per request), ``timed``
    (per-request latencies), ``delay=MS`` (think time before each request)."""

    def __init__(self, port: int, path: str, connections: int, duration: float,
                 threads: int = 1, script_args: tuple[str, ...] = ()) -> None:
        self.argv = [
            "wrk", f"-t{max(1, min(threads, connections))}", f"-c{connections}",
            f"-d{max(1, round(duration))}s", "--timeout", WRK_TIMEOUT, "-s", str(COUNT_LUA),
            f"http://{HOST}:{port}{path}",
        ]
        if script_args:
            self.argv += ["--", *script_args]
        self.duration = duration
        self.proc = spawn(self.argv, capture=True)

    def interrupt(self) -> None:
        """Stop early: wrk reports what it measured so far on SIGINT."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGINT)

    def result(self) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=self.duration + 60)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc.pid)
            out, err = self.proc.communicate()
        finally:
            forget(self.proc)
        for line in out.splitlines():
            if line.startswith("BENCH_RESULT "):
                data: dict[str, Any] = json.loads(line[len("BENCH_RESULT "):])
                break
        else:
            raise BenchError(f"wrk printed no result ({' '.join(self.argv)}):\n{out}\n{err}")
        seconds = data["duration_us"] / 1e6
        errors = data["errors"]
        data["rps"] = data["requests"] / seconds if seconds else 0.0
        data["socket_errors"] = sum(errors[k] for k in ("connect", "read", "write", "timeout"))
        data["failed"] = data["non2xx"] + data["socket_errors"]
        return data


def get(port: int, path: str = "/fast", timeout: float = 2.0) -> tuple[int, str | None]:
    """One GET on a new connection: (status, x-pid)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("x-pid")
    finally:
        conn.close()


def burst(port: int, n: int, path: str) -> set[str]:
    """n concurrent GETs; the worker pids that answered."""
    pids: set[str] = set()
    lock = threading.Lock()

    def one() -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, pid = get(port, path)
            if status == 200 and pid:
                with lock:
                    pids.add(pid)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return pids


class Leaker(threading.Thread):
    """GET /leak at a fixed rate, a new connection each time; counts what failed."""

    def __init__(self, port: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.interval = 1.0 / rate
        self.halt = threading.Event()
        self.ok = 0
        self.failed = 0
        self.errors: dict[str, int] = {}

    def run(self) -> None:
        due = time.monotonic()
        while not self.halt.is_set():
            try:
                status, _pid = get(self.port, "/leak", timeout=5)
                if 200 <= status < 300:
                    self.ok += 1
                else:
                    self.failed += 1
                    self.errors[f"HTTP {status}"] = self.errors.get(f"HTTP {status}", 0) + 1
            except (OSError, http.client.HTTPException) as exc:
                self.failed += 1
                kind = type(exc).__name__
                self.errors[kind] = self.errors.get(kind, 0) + 1
            due += self.interval
            delay = due - time.monotonic()
            if delay > 0:
                self.halt.wait(delay)
            else:
                due = time.monotonic()

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.open_connection(HOST, port)
    except OSError:
        return None


async def _ask(stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
               path: str) -> str | None:
    """One keep-alive GET on an open connection; the x-pid that answered."""
    if stream is None:
        return None
    reader, writer = stream
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    if " 200 " not in lines[0] + " ":
        return None
    fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
        await reader.readexactly(int(fields.get("content-length", "0")))
    return fields.get("x-pid")


async def _connection_burst(port: int, n: int, path: str,
                            timeout: float) -> tuple[list[str | None], float]:
    t0 = time.monotonic()
    streams = await asyncio.gather(*(_connect(port) for _ in range(n)))
    try:
        pids = await asyncio.wait_for(asyncio.gather(*(_ask(s, path) for s in streams)),
                                      timeout)
    except asyncio.TimeoutError:
        pids = [None] * n
    seconds = time.monotonic() - t0
    for stream in streams:
        if stream is not None:
            stream[1].close()
    return list(pids), seconds


def connection_burst(port: int, n: int, path: str = "/fast",
                     timeout: float = 10.0) -> dict[str, Any]:
    """Open ``n`` keep-alive connections at once, then send one GET on each (all open
    together), and count the connections each worker served."""
    pids, seconds = asyncio.run(_connection_burst(port, n, path, timeout))
    counts: dict[str, int] = {}
    for pid in pids:
        if pid:
            counts[pid] = counts.get(pid, 0) + 1
    failed = sum(1 for pid in pids if not pid)
    return {"connections": n, "pids": counts, "failed": failed, "requests": n - failed,
            "burst_seconds": seconds}
