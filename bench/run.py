"""Benchmark pmx against uvicorn --workers, gunicorn + UvicornWorker and granian.

Run from the repository root (``make bench`` does it all on a fresh machine):

    .venv/bin/python bench/run.py              # full run: 10 s per measurement, 3 repeats
    .venv/bin/python bench/run.py --quick      # 3 s per measurement
    .venv/bin/python bench/run.py --help

Every server serves the same app (bench/app.py) with the same number of workers on a free
port of 127.0.0.1; the harness starts each one itself, waits until every worker answers,
and stops it with SIGTERM (then kills its process group, whatever happened). The load
comes from wrk with the scripts in bench/ (count.lua, close.lua), which count responses
per worker pid and non-2xx responses.

The report (Markdown) goes to stdout and to docs/benchmarks.md (``--output``); the raw
figures and every server's log go to bench/results/TIMESTAMP/.

Needs: Python 3.10+, psutil, wrk on PATH; pmx and uvicorn installed in this interpreter;
gunicorn + uvicorn-worker and granian are measured when importable.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
APP = "bench.app:app"
HOST = "127.0.0.1"
COUNT_LUA = BENCH / "count.lua"
CLOSE_LUA = BENCH / "close.lua"
MIB = 1024 * 1024

# What the servers are compared on (pmx, each policy, against uvicorn --workers).
KEEPALIVE_CONNECTIONS = 64
CLOSE_CONNECTIONS = 16
MIXED_FAST_CONNECTIONS = 16
# Load kept on the app during a reload and during memory recycling.
CHURN_KEEPALIVE_CONNECTIONS = 16
CHURN_CLOSE_CONNECTIONS = 8
WRK_TIMEOUT = "5s"
# How long the load stays on waiting for replaced workers to exit (pmx's default
# --graceful-timeout is 30 s).
GRACEFUL_WAIT = 40.0


class BenchError(Exception):
    pass


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Processes: everything started here is registered and killed at exit.

_LIVE: set[subprocess.Popen[Any]] = set()


def spawn(argv: list[str], log_path: Path | None = None, env: dict[str, str] | None = None,
          capture: bool = False) -> subprocess.Popen[Any]:
    """Start a process in its own session (its own process group)."""
    if capture:
        out: Any = subprocess.PIPE
        err: Any = subprocess.PIPE
    else:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        err = subprocess.STDOUT
    try:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True, text=capture,
        )
    finally:
        if not capture and log_path:
            out.close()
    _LIVE.add(proc)
    return proc


def kill_tree(pid: int) -> None:
    """SIGKILL a process, its descendants and its process group."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        procs = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> int | None:
    """SIGTERM, wait up to ``timeout``, then kill the whole group anyway.

    Returns the exit code seen after SIGTERM, or None if it had to be killed."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    code: int | None = None
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
    else:
        code = proc.returncode
    kill_tree(proc.pid)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    _LIVE.discard(proc)
    return code


def _cleanup() -> None:
    for proc in list(_LIVE):
        kill_tree(proc.pid)
        _LIVE.discard(proc)


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------
# HTTP probes (readiness, the /leak client).


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


def wait_ready(port: int, workers: int, proc: subprocess.Popen[Any] | None = None,
               timeout: float = 90.0, log_path: Path | None = None) -> set[str]:
    """Poll until the server answers /fast, then until every worker has answered.

    Requests to /slow hold a worker's event loop for 50 ms, so concurrent ones reach
    the other workers even with servers whose workers race for accept()."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"server exited with code {proc.returncode} before it was ready"
                             + (f"; see {log_path}" if log_path else ""))
        try:
            status, _pid = get(port)
            if status == 200:
                break
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"nothing answered on port {port} after {timeout:g} s")
        time.sleep(0.05)
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while len(seen) < workers and time.monotonic() < deadline:
        seen |= burst(port, 2 * workers, "/slow")
    if len(seen) < workers:
        log(f"warning: only {len(seen)} of {workers} workers answered on port {port}")
    return seen


# --------------------------------------------------------------------------------------
# wrk


def wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    except OSError:
        return "not found"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].split(" Copyright")[0] if text else "unknown"


class Wrk:
    """One wrk process running a bench/*.lua script; ``result()`` parses its summary."""

    def __init__(self, port: int, path: str, connections: int, duration: int, script: Path,
                 threads: int = 1, script_args: tuple[str, ...] = ()) -> None:
        self.argv = [
            "wrk", f"-t{max(1, min(threads, connections))}", f"-c{connections}",
            f"-d{duration}s", "--timeout", WRK_TIMEOUT, "-s", str(script),
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
            _LIVE.discard(self.proc)
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


def _busy_seconds() -> float:
    """CPU time spent by processes (user, system, nice) and stolen by the hypervisor.
    Interrupt time is left out: loopback traffic is handled there and is not charged to
    any process, so it would count the benchmark's own load as someone else's."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "steal", 0.0)


def _steal_seconds() -> float:
    return getattr(psutil.cpu_times(), "steal", 0.0)


def _own_seconds() -> float:
    """CPU time of this harness and of its reaped children (wrk, pmx commands)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _tree_seconds(pid: int) -> float:
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


class Interference:
    """How much CPU the rest of the machine used during a measurement, in cores: all
    busy CPU time minus this harness, its children and the server's processes."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.start = (time.monotonic(), _busy_seconds(), _own_seconds(), _tree_seconds(server_pid))
        self.steal_start = _steal_seconds()

    def steal(self) -> float:
        """Of those cores, how much the hypervisor gave to other machines."""
        elapsed = time.monotonic() - self.start[0]
        return max(0.0, (_steal_seconds() - self.steal_start) / elapsed) if elapsed > 0 else 0.0

    def cores(self) -> float:
        t0, busy0, own0, tree0 = self.start
        elapsed = time.monotonic() - t0
        other = ((_busy_seconds() - busy0) - (_own_seconds() - own0)
                 - (_tree_seconds(self.server_pid) - tree0))
        return max(0.0, other / elapsed) if elapsed > 0 else 0.0


def spread(pids: dict[str, int], workers: int) -> float:
    """max/min of the requests served per worker (inf if a worker served none)."""
    counts = [n for pid, n in pids.items() if pid != "none"]
    if len(counts) < workers or min(counts) == 0:
        return float("inf")
    return max(counts) / min(counts)


# --------------------------------------------------------------------------------------
# The servers


@dataclass
class Server:
    key: str
    label: str
    argv: Callable[[int, int], list[str]]
    pmx_policy: str | None = None
    available: bool = True
    missing: str = ""


def _tool(name: str) -> list[str]:
    path = BIN / name
    return [str(path)] if path.exists() else [sys.executable, "-m", name]


def pmx_policies() -> list[str]:
    """The --balance choices, as `pmx run --help` lists them."""
    out = subprocess.run([*_tool("pmx"), "run", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    match = re.search(r"--balance\s+\[([^\]]+)\]", out.stdout)
    if not match:
        raise BenchError(f"cannot find the --balance choices in 'pmx run --help':\n{out.stdout}"
                         f"{out.stderr}")
    return [p.strip() for p in match.group(1).split("|") if p.strip()]


def servers() -> list[Server]:
    def pmx(policy: str) -> Callable[[int, int], list[str]]:
        return lambda port, workers: [
            *_tool("pmx"), "run", APP, "-i", str(workers), "--bind", f"{HOST}:{port}",
            "--no-access-log", "--balance", policy, "--name", "bench",
        ]

    found = {m: importlib.util.find_spec(m) is not None
             for m in ("uvicorn", "gunicorn", "uvicorn_worker", "granian")}
    return [
        *(Server(f"pmx-{policy}", f"pmx {policy}", pmx(policy), pmx_policy=policy)
          for policy in pmx_policies()),
        Server(
            "uvicorn", "uvicorn --workers",
            lambda port, workers: [
                sys.executable, "-m", "uvicorn", APP, "--host", HOST, "--port", str(port),
                "--workers", str(workers), "--no-access-log",
            ],
            available=found["uvicorn"], missing="uvicorn is not installed",
        ),
        Server(
            "gunicorn", "gunicorn + UvicornWorker",
            # gunicorn writes no access log unless --access-logfile is given.
            lambda port, workers: [
                sys.executable, "-m", "gunicorn", APP, "-k", "uvicorn_worker.UvicornWorker",
                "-w", str(workers), "-b", f"{HOST}:{port}",
            ],
            available=found["gunicorn"] and found["uvicorn_worker"],
            missing="gunicorn or uvicorn-worker is not installed",
        ),
        Server(
            "granian", "granian",
            lambda port, workers: [
                *_tool("granian"), "--interface", "asgi", "--host", HOST, "--port", str(port),
                "--workers", str(workers), "--no-access-log", APP,
            ],
            available=found["granian"], missing="granian is not installed",
        ),
    ]


@contextlib.contextmanager
def running(server: Server, workers: int,
            log_path: Path) -> Iterator[tuple[int, subprocess.Popen[Any]]]:
    port = free_port()
    proc = spawn(server.argv(port, workers), log_path=log_path)
    try:
        wait_ready(port, workers, proc, log_path=log_path)
        yield port, proc
    finally:
        code = stop_process(proc)
        if code is None:
            log(f"warning: {server.label} did not stop within 30 s of SIGTERM; killed")


# --------------------------------------------------------------------------------------
# Scenarios against one running server


def scenario_keepalive(port: int, cfg: Config) -> dict[str, Any]:
    r = Wrk(port, "/fast", KEEPALIVE_CONNECTIONS, cfg.duration, COUNT_LUA, cfg.threads).result()
    r["spread"] = spread(r["pids"], cfg.workers)
    return r


def scenario_close(port: int, cfg: Config) -> dict[str, Any]:
    return Wrk(port, "/fast", CLOSE_CONNECTIONS, cfg.duration, CLOSE_LUA, cfg.threads).result()


def scenario_mixed(port: int, cfg: Config) -> dict[str, Any]:
    """One keep-alive client looping on /slow (50 ms blocking) while 16 clients open a
    new connection per request to /fast."""
    slow = Wrk(port, "/slow", 1, cfg.duration + 5, COUNT_LUA, 1)
    try:
        fast = Wrk(port, "/fast", MIXED_FAST_CONNECTIONS, cfg.duration, COUNT_LUA, cfg.threads,
                   script_args=("close", "timed"))
        result = fast.result()
    finally:
        slow.interrupt()
    result["slow"] = slow.result()
    return result


# --------------------------------------------------------------------------------------
# pmx under its daemon: reload, memory recycling, status


def pmx_cli(home: Path, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PMX_HOME=str(home))
    return subprocess.run([*_tool("pmx"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def pmx_daemon(results: Path, tag: str) -> Iterator[Path]:
    """A throwaway PMX_HOME; ``pmx kill`` at the end, then kill whatever is left."""
    home = Path(tempfile.mkdtemp(prefix="pmx-bench-"))
    try:
        yield home
    finally:
        daemon_pid = None
        with contextlib.suppress(OSError, ValueError):
            daemon_pid = int((home / "pmx.pid").read_text().split()[0])
        try:
            killed = pmx_cli(home, "kill", timeout=90)
            if killed.returncode != 0:
                log(f"warning: pmx kill exited {killed.returncode}: {killed.stderr.strip()}")
        except subprocess.TimeoutExpired:
            log("warning: pmx kill did not return within 90 s")
        if daemon_pid and psutil.pid_exists(daemon_pid):
            log(f"warning: the pmx daemon (pid {daemon_pid}) outlived pmx kill; killed")
            kill_tree(daemon_pid)
        if (home / "logs").is_dir():
            shutil.copytree(home / "logs", results / f"pmx-home-{tag}", dirs_exist_ok=True)
        shutil.rmtree(home, ignore_errors=True)


def pmx_start(home: Path, name: str, port: int, cfg: Config, policy: str,
              *extra: str) -> dict[str, Any]:
    started = pmx_cli(
        home, "start", APP, "-i", str(cfg.workers), "--name", name, "--bind", f"{HOST}:{port}",
        "--no-access-log", "--balance", policy, "--app-dir", str(ROOT), *extra,
    )
    if started.returncode != 0:
        raise BenchError(f"pmx start failed ({started.returncode}): {started.stderr.strip()}")
    wait_ready(port, cfg.workers)
    return describe(home, name)


def describe(home: Path, name: str) -> dict[str, Any]:
    out = pmx_cli(home, "describe", name, "--json", timeout=60)
    if out.returncode != 0:
        raise BenchError(f"pmx describe failed ({out.returncode}): {out.stderr.strip()}")
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def churn_load(port: int, duration: int, threads: int) -> tuple[Wrk, Wrk]:
    """Keep-alive and new-connection load on /fast at once."""
    keepalive = Wrk(port, "/fast", CHURN_KEEPALIVE_CONNECTIONS, duration, COUNT_LUA, threads)
    close = Wrk(port, "/fast", CHURN_CLOSE_CONNECTIONS, duration, CLOSE_LUA, threads)
    return keepalive, close


def churn_results(keepalive: Wrk, close: Wrk) -> dict[str, Any]:
    keepalive.interrupt()
    close.interrupt()
    ka, cl = keepalive.result(), close.result()
    return {
        "keepalive": ka, "close": cl,
        "requests": ka["requests"] + cl["requests"],
        "failed": ka["failed"] + cl["failed"],
    }


def scenario_reload(cfg: Config, policy: str, results: Path, tag: str) -> dict[str, Any]:
    """Steady load for a baseline window, then the same load through ``pmx reload``."""
    window = max(2, round(cfg.duration * 0.3))
    with pmx_daemon(results, tag) as home:
        port = free_port()
        before = pmx_start(home, "bench-reload", port, cfg, policy)
        old_pids = sorted(w["pid"] for w in before["workers"])

        ka, cl = churn_load(port, window, cfg.threads)
        baseline = churn_results_wait(ka, cl)

        ka, cl = churn_load(port, window * 2 + 120, cfg.threads)
        try:
            time.sleep(window / 2)  # load running before the reload starts
            t0 = time.monotonic()
            reloaded = pmx_cli(home, "reload", "bench-reload")
            reload_seconds = time.monotonic() - t0
            # Keep the load on until the replaced workers have exited (their drain is
            # part of the reload), then a little longer.
            drained_seconds = wait_gone(old_pids, GRACEFUL_WAIT)
            still_running = [pid for pid in old_pids if alive(pid)]
            time.sleep(window / 2)
        finally:
            during = churn_results(ka, cl)
        after = describe(home, "bench-reload")
        master_rss = None
        with contextlib.suppress(psutil.Error, TypeError):
            master_rss = psutil.Process(after["master_pid"]).memory_info().rss
    new_pids = sorted(w["pid"] for w in after["workers"])
    reasons = [h["reason"] for h in after.get("history", [])]
    return {
        "policy": policy,
        "reload_rc": reloaded.returncode,
        "reload_stderr": reloaded.stderr.strip(),
        "reload_seconds": reload_seconds,
        "drained_after": drained_seconds,
        "still_running": still_running,
        "old_pids": old_pids,
        "new_pids": new_pids,
        "replaced": reasons.count("reload"),
        "baseline": baseline,
        "during": during,
        "failed": during["failed"],
        "master_rss": master_rss,
    }


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(pids: list[int], timeout: float) -> float:
    """Poll until none of ``pids`` runs any more; returns the seconds waited."""
    t0 = time.monotonic()
    while any(alive(pid) for pid in pids) and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    return time.monotonic() - t0


def churn_results_wait(keepalive: Wrk, close: Wrk) -> dict[str, Any]:
    ka, cl = keepalive.result(), close.result()
    return {"keepalive": ka, "close": cl, "requests": ka["requests"] + cl["requests"],
            "failed": ka["failed"] + cl["failed"]}


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


def scenario_memory(cfg: Config, policy: str, results: Path, tag: str) -> dict[str, Any]:
    """/fast load plus a client leaking 1 MiB per request, with --max-memory set low, until
    ``cfg.mem_restarts`` memory replacements are recorded (or ``cfg.mem_timeout``)."""
    with pmx_daemon(results, tag) as home:
        port = free_port()
        pmx_start(home, "bench-mem", port, cfg, policy, "--max-memory", cfg.max_memory)
        ka, cl = churn_load(port, cfg.mem_timeout + 120, cfg.threads)
        leaker = Leaker(port, cfg.leak_rate)
        leaker.start()
        t0 = time.monotonic()
        restarts = 0
        try:
            while time.monotonic() - t0 < cfg.mem_timeout:
                time.sleep(1.0)
                history = describe(home, "bench-mem").get("history", [])
                restarts = sum(1 for h in history if h["reason"] == "memory")
                if restarts >= cfg.mem_restarts:
                    break
            leaker.stop()
            # Keep the /fast load on until every replaced worker has exited.
            replaced = [h["pid"] for h in describe(home, "bench-mem").get("history", [])]
            drained_seconds = wait_gone(replaced, GRACEFUL_WAIT)
            time.sleep(1.0)
        finally:
            leaker.stop()
            load = churn_results(ka, cl)
        elapsed = time.monotonic() - t0
        final = describe(home, "bench-mem")
    history = final.get("history", [])
    reasons: dict[str, int] = {}
    for h in history:
        reasons[h["reason"]] = reasons.get(h["reason"], 0) + 1
    return {
        "policy": policy,
        "seconds": elapsed,
        "max_memory": cfg.max_memory,
        "leak_rate": cfg.leak_rate,
        "restarts": reasons.get("memory", 0),
        "reasons": reasons,
        "history": history,
        "load": load,
        "drained_after": drained_seconds,
        "leak_ok": leaker.ok,
        "leak_failed": leaker.failed,
        "leak_errors": leaker.errors,
        "failed": load["failed"] + leaker.failed,
    }


def scenario_status(cfg: Config, results: Path) -> dict[str, Any]:
    """``pmx status`` wall time (median of 5) and the daemon-run master's RSS, with a
    daemon running one idle app."""
    with pmx_daemon(results, "status") as home:
        port = free_port()
        pmx_start(home, "bench-status", port, cfg, "round-robin")
        quiet = wait_quiet(cfg)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            out = pmx_cli(home, "status", timeout=60)
            times.append(time.perf_counter() - t0)
            if out.returncode != 0:
                raise BenchError(f"pmx status failed ({out.returncode}): {out.stderr.strip()}")
        data = json.loads(pmx_cli(home, "status", "--json", timeout=60).stdout)
        app = data["apps"][0]
        master_rss = psutil.Process(app["master_pid"]).memory_info().rss
        daemon_rss = None
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            daemon_pid = int((home / "pmx.pid").read_text().split()[0])
            daemon_rss = psutil.Process(daemon_pid).memory_info().rss
        worker_rss = [w["memory"] for w in app["workers"]]
    return {
        "times": times,
        "median": statistics.median(times),
        "other_cores_before": quiet,
        "master_rss": master_rss,
        "daemon_rss": daemon_rss,
        "worker_rss": worker_rss,
    }


# --------------------------------------------------------------------------------------
# Driver


@dataclass
class Config:
    workers: int
    duration: int
    repeats: int
    threads: int
    warmup: int
    max_memory: str
    leak_rate: float
    mem_restarts: int
    mem_timeout: int
    scenarios: set[str]
    busy_cores: float
    retries: int
    quiet_wait: float


SCENARIOS = ("keepalive", "close", "mixed", "reload", "memory", "status")


def wait_quiet(cfg: Config) -> float:
    """Wait (up to cfg.quiet_wait seconds) until the rest of the machine uses less than
    cfg.busy_cores of CPU over one second; returns the last reading."""
    deadline = time.monotonic() + cfg.quiet_wait
    while True:
        t0, busy0, own0 = time.monotonic(), _busy_seconds(), _own_seconds()
        time.sleep(1.0)
        other = ((_busy_seconds() - busy0) - (_own_seconds() - own0)) / (time.monotonic() - t0)
        if other < cfg.busy_cores or time.monotonic() > deadline:
            if other >= cfg.busy_cores:
                log(f"  the machine is still busy ({other:.2f} cores used elsewhere); going on")
            return other


def measure(fn: Callable[[int, Config], dict[str, Any]], port: int, server_pid: int,
            master: psutil.Process | None, cfg: Config, name: str) -> dict[str, Any]:
    """Run one scenario; if other processes used more than cfg.busy_cores of CPU
    meanwhile, run it again (up to cfg.retries times) and keep the quietest attempt."""
    attempts: list[dict[str, Any]] = []
    for attempt in range(cfg.retries + 1):
        if attempt:
            wait_quiet(cfg)
        before = master.cpu_times() if master is not None else None
        others = Interference(server_pid)
        tree_before = _tree_seconds(server_pid)
        result = fn(port, cfg)
        result["other_cores"] = others.cores()
        result["steal_cores"] = others.steal()
        if result.get("requests"):
            used = _tree_seconds(server_pid) - tree_before
            result["server_cpu_us"] = used / result["requests"] * 1e6
        if master is not None and before is not None:
            after = master.cpu_times()
            used = (after.user - before.user) + (after.system - before.system)
            result["master_cpu"] = used / (result["duration_us"] / 1e6)
        attempts.append(result)
        if result["other_cores"] < cfg.busy_cores:
            break
        log(f"  {name}: {result['other_cores']:.2f} cores used elsewhere meanwhile"
            + ("; measuring again" if attempt < cfg.retries else "; keeping the quietest"))
    best = min(attempts, key=lambda r: r["other_cores"])
    best["attempts"] = len(attempts)
    return best


def measure_servers(cfg: Config, chosen: list[Server], results: Path) -> Runs:
    """Each repeat starts every server (all of them at once, idle but for the one under
    load) and runs each scenario on one server after the other, so that the servers
    compared in a scenario are measured within a minute or two of each other: on a
    shared machine the CPU left to the benchmark drifts, and this keeps the drift out of
    the ratios as far as possible. The order of the servers rotates between repeats."""
    runs: Runs = {s.key: [] for s in chosen}
    wanted = [s for s in ("keepalive", "close", "mixed") if s in cfg.scenarios]
    if not wanted:
        return runs
    for repeat in range(cfg.repeats):
        shift = repeat % len(chosen)
        order = chosen[shift:] + chosen[:shift]
        log(f"repeat {repeat + 1}/{cfg.repeats}: starting " + ", ".join(s.label for s in order))
        with contextlib.ExitStack() as stack:
            started: dict[str, tuple[int, subprocess.Popen[Any], psutil.Process | None]] = {}
            records: dict[str, dict[str, Any]] = {}
            rss: dict[str, list[int]] = {}
            for server in order:
                log_path = results / f"{server.key}-{repeat + 1}.log"
                port, proc = stack.enter_context(running(server, cfg.workers, log_path))
                master = psutil.Process(proc.pid) if server.pmx_policy else None
                started[server.key] = (port, proc, master)
                records[server.key] = {"repeat": repeat + 1}
                rss[server.key] = []
                if cfg.warmup:
                    Wrk(port, "/fast", KEEPALIVE_CONNECTIONS, cfg.warmup, COUNT_LUA,
                        cfg.threads).result()
            for name in wanted:
                fn = {"keepalive": scenario_keepalive, "close": scenario_close,
                      "mixed": scenario_mixed}[name]
                for server in order:
                    port, proc, master = started[server.key]
                    wait_quiet(cfg)
                    result = measure(fn, port, proc.pid, master, cfg, name)
                    records[server.key][name] = result
                    if master is not None:
                        rss[server.key].append(master.memory_info().rss)
                    figure = (f"p99 {result['latency_us']['p99'] / 1000:.2f} ms"
                              if name == "mixed" else f"{result['rps']:,.0f} req/s")
                    log(f"  {name}: {server.label}: {figure}")
        for server in order:
            record = records[server.key]
            if rss[server.key]:
                record["master_rss"] = max(rss[server.key])
            runs[server.key].append(record)
    return runs


# --------------------------------------------------------------------------------------
# Report


Summary = tuple[float, float, float]  # median, min, max
Fmt = Callable[[float], str]
Runs = dict[str, list[dict[str, Any]]]
Churn = dict[str, dict[str, list[dict[str, Any]]]]


@dataclass
class Metric:
    key: str
    label: str
    get: Callable[[dict[str, Any]], float | None]
    fmt: Fmt


def _int(v: float) -> str:
    return f"{v:,.0f}"


def _ms(v: float) -> str:
    return f"{v:.2f}"


def _spread(v: float) -> str:
    return "∞" if v == float("inf") else f"{v:.2f}"


def _from(scenario: str, *path: str, scale: float = 1.0) -> Callable[[dict[str, Any]], Any]:
    def get(record: dict[str, Any]) -> Any:
        if scenario not in record:
            return None
        value = record[scenario]
        for key in path:
            if key not in value:
                return None
            value = value[key]
        return value * scale

    return get


def _other_cpu(record: dict[str, Any]) -> float | None:
    values = [record[k].get("other_cores", 0.0) for k in ("keepalive", "close", "mixed")
              if k in record]
    return max(values) if values else None


def _steal_cpu(record: dict[str, Any]) -> float | None:
    present = [record[k] for k in ("keepalive", "close", "mixed") if k in record]
    if not present:
        return None
    worst = max(present, key=lambda r: r.get("other_cores", 0.0))
    return worst.get("steal_cores")


def _failed(record: dict[str, Any]) -> float:
    total = 0
    for kind in ("keepalive", "close", "mixed"):
        if kind in record:
            total += record[kind]["failed"]
            if kind == "mixed":
                total += record[kind]["slow"]["failed"]
    return total


METRICS = [
    Metric("keepalive_rps", f"keep-alive req/s ({KEEPALIVE_CONNECTIONS} conns, /fast)",
           _from("keepalive", "rps"), _int),
    Metric("close_rps", f"new-connection req/s ({CLOSE_CONNECTIONS} conns, Connection: close)",
           _from("close", "rps"), _int),
    Metric("keepalive_cpu", "keep-alive: server CPU per request (µs, all its processes)",
           _from("keepalive", "server_cpu_us"), lambda v: f"{v:.0f}"),
    Metric("close_cpu", "new-connection: server CPU per request (µs, all its processes)",
           _from("close", "server_cpu_us"), lambda v: f"{v:.0f}"),
    Metric("spread", "keep-alive spread, max/min requests per worker",
           _from("keepalive", "spread"), _spread),
    *(Metric(f"mixed_{p}", f"mixed: /fast {p} (ms), wrk",
             _from("mixed", "latency_us", p, scale=0.001), _ms)
      for p in ("p50", "p90", "p99", "p99.9")),
    *(Metric(f"mixed_raw_{p}", f"mixed: /fast {p} (ms), per request",
             _from("mixed", "raw_latency_us", p, scale=0.001), _ms)
      for p in ("p50", "p90", "p99", "p99.9")),
    Metric("mixed_rps", "mixed: /fast req/s", _from("mixed", "rps"), _int),
    Metric("mixed_slow", "mixed: /slow responses (one client)",
           _from("mixed", "slow", "requests"), _int),
    Metric("failed", "failed requests (non-2xx + socket errors)", _failed, _int),
    Metric("other_cpu", "CPU used outside the benchmark meanwhile (cores, worst scenario)",
           _other_cpu, lambda v: f"{v:.2f}"),
    Metric("steal_cpu", "CPU stolen by the hypervisor meanwhile (cores, same scenario)",
           _steal_cpu, lambda v: f"{v:.2f}"),
]
RATIO_METRICS = ("keepalive_rps", "close_rps", "keepalive_cpu", "close_cpu", "mixed_p50", "mixed_p90", "mixed_p99",
                 "mixed_p99.9", "mixed_raw_p50", "mixed_raw_p90", "mixed_raw_p99",
                 "mixed_raw_p99.9", "mixed_rps")


def mmm(values: list[float | None]) -> Summary | None:
    present = [v for v in values if v is not None]
    return (statistics.median(present), min(present), max(present)) if present else None


def summarize(runs: list[dict[str, Any]], metric: Metric) -> Summary | None:
    return mmm([metric.get(r) for r in runs])


def cell(summary: Summary | None, fmt: Fmt) -> str:
    if summary is None:
        return "—"
    m, lo, hi = (fmt(v) for v in summary)
    return m if lo == hi else f"{m} ({lo}–{hi})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "pmx")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + (" with uncommitted changes in pmx/" if dirty else "")


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": cpu,
        "cores": f"{os.cpu_count()} ({usable} usable)",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "load average at start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "pmx": f"{version('pmx-server')} (commit {git_commit()})",
        "uvicorn": version("uvicorn"),
        "uvloop": version("uvloop"),
        "httptools": version("httptools"),
        "gunicorn": version("gunicorn"),
        "uvicorn-worker": version("uvicorn-worker"),
        "granian": version("granian"),
        "wrk": wrk_version(),
    }


def pmx_rows(cfg: Config, runs: Runs, churn: Churn,
             pmx_servers: list[Server]) -> list[list[str]]:
    """One row per figure, one column per pmx policy."""
    rows: list[list[str]] = []

    def row(label: str, per_server: Callable[[Server], str | None]) -> None:
        cells = [per_server(s) for s in pmx_servers]
        if any(c is not None for c in cells):
            rows.append([label, *[c if c is not None else "—" for c in cells]])

    def rel(s: Server) -> list[dict[str, Any]]:
        return churn.get("reload", {}).get(s.pmx_policy or "", [])

    def mem(s: Server) -> list[dict[str, Any]]:
        return churn.get("memory", {}).get(s.pmx_policy or "", [])

    def over(rs: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any],
             fmt: Fmt) -> str | None:
        return cell(mmm([get(r) for r in rs]), fmt) if rs else None

    def total(rs: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> str | None:
        return _int(sum(get(r) for r in rs)) if rs else None

    def p99(part: str, kind: str) -> Callable[[dict[str, Any]], float]:
        return lambda r: r[part][kind]["latency_us"]["p99"] / 1000

    secs: Fmt = lambda v: f"{v:.2f}"  # noqa: E731
    mib: Fmt = lambda v: f"{v:.1f}"  # noqa: E731

    row("**reload**: failed requests (sum over runs)",
        lambda s: total(rel(s), lambda r: r["failed"]))
    row("reload: requests served meanwhile (sum)",
        lambda s: total(rel(s), lambda r: r["during"]["requests"]))
    row(f"reload: runs that replaced all {cfg.workers} workers",
        lambda s: f"{sum(r['reload_rc'] == 0 and r['replaced'] == cfg.workers for r in rel(s))} "
                  f"of {len(rel(s))}" if rel(s) else None)
    row("reload: `pmx reload` wall time (s)",
        lambda s: over(rel(s), lambda r: r["reload_seconds"], secs))
    row("reload: replaced workers gone, s after `pmx reload` returned",
        lambda s: over(rel(s), lambda r: r["drained_after"], secs))
    row("reload: keep-alive p99 (ms), steady",
        lambda s: over(rel(s), p99("baseline", "keepalive"), _ms))
    row("reload: keep-alive p99 (ms), through the reload",
        lambda s: over(rel(s), p99("during", "keepalive"), _ms))
    row("reload: new-connection p99 (ms), steady",
        lambda s: over(rel(s), p99("baseline", "close"), _ms))
    row("reload: new-connection p99 (ms), through the reload",
        lambda s: over(rel(s), p99("during", "close"), _ms))
    row("**memory**: failed requests (sum over runs)",
        lambda s: total(mem(s), lambda r: r["failed"]))
    row("memory: requests served meanwhile (sum)",
        lambda s: total(mem(s), lambda r: r["load"]["requests"] + r["leak_ok"]))
    row("memory: restarts with reason `memory`, per run",
        lambda s: ", ".join(str(r["restarts"]) for r in mem(s)) if mem(s) else None)
    row("memory: replaced workers gone, s after the last restart was seen",
        lambda s: over(mem(s), lambda r: r["drained_after"], secs))
    def master_cpu(kind: str) -> Callable[[Server], str | None]:
        def get(s: Server) -> str | None:
            rs = [r for r in runs.get(s.key, []) if "master_cpu" in r.get(kind, {})]
            return over(rs, lambda r: r[kind]["master_cpu"] * 100, lambda v: f"{v:.0f}")

        return get

    for kind, label in (("keepalive", "keep-alive"), ("close", "new-connection"),
                        ("mixed", "mixed")):
        row(f"master CPU in the {label} scenario (% of one core)", master_cpu(kind))
    row("master RSS after load, `pmx run` (MiB)",
        lambda s: over([r for r in runs.get(s.key, []) if "master_rss" in r],
                       lambda r: r["master_rss"] / MIB, mib))
    row("master RSS after the reload runs, under the daemon (MiB)",
        lambda s: over([r for r in rel(s) if r.get("master_rss")],
                       lambda r: r["master_rss"] / MIB, mib))
    return rows


def report(cfg: Config, chosen: list[Server], skipped: list[Server], runs: Runs, churn: Churn,
           status: dict[str, Any] | None, info: dict[str, str], argv: list[str]) -> str:
    out: list[str] = []
    w = out.append
    base = "uvicorn" if runs.get("uvicorn") else None
    pmx_servers = [s for s in chosen if s.pmx_policy]

    w("# Benchmarks\n")
    w("pmx against `uvicorn --workers`, gunicorn with `uvicorn_worker.UvicornWorker` and "
      "granian, all serving the same plain ASGI app ([bench/app.py](../bench/app.py)) with "
      f"{cfg.workers} workers on 127.0.0.1, loaded by wrk from the same machine. The "
      "figures below are from one run on the machine described; they say how the servers "
      "compare there, not what any of them does on other hardware.\n")
    w("## Rerun\n")
    w("```sh\n"
      "make bench                              # installs wrk and the servers, full run\n"
      "make bench BENCH_ARGS=--quick           # 3 s per measurement\n"
      ".venv/bin/python bench/run.py --help    # durations, repeats, workers, servers, ...\n"
      "```\n")
    w("A run replaces this file (`--output FILE` writes elsewhere, `--output -` only prints) "
      "and keeps the raw figures (`results.json`) and every server's log in "
      "`bench/results/DATE-TIME/`, which git ignores.\n")

    w("## Targets\n")
    w(f"pmx with {cfg.workers} workers; ratios are to `uvicorn --workers` measured in the "
      "same run.\n")
    w(table(["target", "threshold", *[s.label for s in pmx_servers]],
            target_rows(cfg, runs, churn, status, base, pmx_servers)))
    w("")

    w("## Throughput and latency\n")
    w(f"Median of {cfg.repeats} repeat(s), with the min–max range in brackets when they "
      "differ.\n")
    measured = [m for m in METRICS if any(summarize(runs[s.key], m) for s in chosen)]
    rows = [[m.label, *[cell(summarize(runs[s.key], m), m.fmt) for s in chosen]]
            for m in measured]
    w(table(["", *[s.label for s in chosen]], rows))
    w("")
    if base:
        w("### Ratio to `uvicorn --workers`\n")
        w("Each server's median divided by uvicorn's median in the same run: above 1 is "
          "better for req/s, below 1 is better for latency and CPU per request.\n")
        others = [s for s in chosen if s.key != base]
        rows = []
        for metric in (m for m in measured if m.key in RATIO_METRICS):
            b = summarize(runs[base], metric)
            row = [metric.label]
            for s in others:
                v = summarize(runs[s.key], metric)
                row.append(f"{v[0] / b[0]:.2f}×" if v and b and b[0] else "—")
            rows.append(row)
        w(table(["", *[s.label for s in others]], rows))
        w("")

    rows = pmx_rows(cfg, runs, churn, pmx_servers)
    if rows or status:
        w("## pmx only: reload, memory recycling, footprint\n")
    if rows:
        w(table(["", *[s.label for s in pmx_servers]], rows))
        w("")
    if status:
        rows = [["`pmx status` wall time, median of 5 (s)", f"{status['median']:.3f}"],
                ["`pmx status` wall times (s)", ", ".join(f"{t:.3f}" for t in status["times"])],
                ["master RSS under the daemon, idle (MiB)", f"{status['master_rss'] / MIB:.1f}"]]
        if status.get("daemon_rss"):
            rows.append(["daemon RSS (MiB)", f"{status['daemon_rss'] / MIB:.1f}"])
        rows.append(["worker RSS, idle (MiB)",
                     ", ".join(f"{v / MIB:.1f}" for v in status["worker_rss"] if v)])
        w("With the daemon running one idle app (round-robin):\n")
        w(table(["", ""], rows))
        w("")

    w("## Machine and versions\n")
    w(table(["", ""], [[k, v] for k, v in info.items()]))
    w("")

    w("## How it is measured\n")
    w(f"Command: `{' '.join(argv)}`.\n")
    w(f"Each repeat starts every server afresh on its own free port, polls until every "
      f"worker has answered and warms each up with {cfg.warmup} s of keep-alive load. "
      f"Then it runs scenario 1 for {cfg.duration} s on each server in turn, then "
      "scenario 2 on each, then scenario 4 (the order of the servers rotates between "
      "repeats), so the servers compared in one scenario are measured minutes apart at "
      "most; the servers not under load meanwhile are idle. At the end of the repeat it "
      "stops them all with SIGTERM. wrk runs with {cfg.threads} "
      f"thread(s) and `--timeout {WRK_TIMEOUT}` on the same cores as the servers, so each "
      "server shares the CPU with its load generator. The servers: "
      "`pmx run bench.app:app -i N --no-access-log --balance POLICY`, "
      "`uvicorn bench.app:app --workers N --no-access-log`, "
      "`gunicorn bench.app:app -k uvicorn_worker.UvicornWorker -w N` (no access log "
      "unless asked for), `granian --interface asgi --workers N --no-access-log "
      "bench.app:app`.\n")
    w("The machine may be shared. Before starting each server the harness waits (up to "
      f"{cfg.quiet_wait:g} s) until other processes use less than {cfg.busy_cores:g} "
      "cores, and a measurement during which they used more is taken again (up to "
      f"{cfg.retries} more times), keeping the quietest attempt. The row *CPU used outside "
      "the benchmark* shows what remained: all process CPU time on the machine minus the "
      "harness, wrk and the server's own processes, in cores; on a virtual machine it "
      "includes the time the hypervisor gave to other machines (*stolen*), during which "
      "neither the server nor wrk could run. Throughput moves with it; the *server CPU "
      "per request* rows (user + system time of all the server's processes, divided by "
      "the requests served) move much less, and compare what each server spends on the "
      "same work.\n")
    if skipped:
        w("Not measured: " + "; ".join(f"{s.label} ({s.missing})" for s in skipped) + ".\n")
    w(f"1. **Keep-alive throughput**: {KEEPALIVE_CONNECTIONS} keep-alive connections on "
      "GET /fast (bench/count.lua).\n"
      f"2. **New-connection throughput**: {CLOSE_CONNECTIONS} connections sending "
      "`Connection: close` (bench/close.lua), so every request is a new connection that "
      "the server accepts (and pmx's master hands to a worker).\n"
      "3. **Keep-alive spread**: from scenario 1's counts per `x-pid` header, the most "
      "requests one worker served divided by the fewest (∞ if a worker served none).\n"
      "4. **Mixed**: one keep-alive client looping on /slow (each request blocks its "
      f"worker's event loop for 50 ms) while {MIXED_FAST_CONNECTIONS} new-connection "
      "clients hit /fast; the percentiles are those of /fast (see *Latency* below).\n"
      "5. **Reload** (pmx only): `pmx start` in a temporary `PMX_HOME`, "
      f"{CHURN_KEEPALIVE_CONNECTIONS} keep-alive and {CHURN_CLOSE_CONNECTIONS} "
      "new-connection clients on /fast for a steady window, then the same load from half a "
      "window before `pmx reload` until the replaced workers have exited, plus half a "
      "window; then `pmx kill`.\n"
      "6. **Memory restarts** (pmx only): the same load plus a client requesting /leak "
      f"(1 MiB kept per request) {cfg.leak_rate:g} times a second on new connections, "
      f"with `--max-memory {cfg.max_memory}`, until {cfg.mem_restarts} replacements with "
      f"reason `memory` show in `pmx describe --json` (at most {cfg.mem_timeout} s); then "
      "the /leak client stops and the /fast load goes on until every replaced worker has "
      "exited, plus 1 s.\n")
    w("Scenarios 5 and 6 run once per repeat for each pmx policy. A failed request is a "
      "non-2xx response or a socket error (connect, read, write, timeout) seen by wrk or "
      "by the /leak client. Master RSS is measured with psutil after the load; `pmx "
      "status` is timed as a whole command (interpreter start included).\n")
    per_request = any(m.key.startswith("mixed_raw_") for m in measured)
    w("Latency. The figures marked *wrk* (and the p99s of the reload scenario) are wrk's "
      "own percentiles, which wrk 4 computes after correcting its histogram for "
      "coordinated omission: for every response slower than twice the average interval "
      "between two requests of a connection, it adds samples as if the requests that "
      "connection did not send meanwhile had been as slow. With a few slow responses "
      "among many fast ones (the mixed scenario) this raises the upper percentiles far "
      "above those of the responses actually received, and by an amount that depends on "
      "the server's own throughput. "
      + ("The figures marked *per request* are the latencies of the responses actually "
         "received, timed by count.lua (`timed`: each request carries its start time in an "
         "`x-echo` header that the app returns).\n" if per_request else
         "This run has only wrk's figures; a rerun adds per-request ones (count.lua's "
         "`timed` mode).\n"))
    return "\n".join(out)


def target_rows(cfg: Config, runs: Runs, churn: Churn, status: dict[str, Any] | None,
                base: str | None, pmx_servers: list[Server]) -> list[list[str]]:
    by_key = {m.key: m for m in METRICS}

    def ratio(key: str) -> Callable[[Server], float | None]:
        def get(s: Server) -> float | None:
            if not base:
                return None
            v = summarize(runs.get(s.key, []), by_key[key])
            b = summarize(runs[base], by_key[key])
            return v[0] / b[0] if v and b and b[0] else None

        return get

    def spread_of(s: Server) -> float | None:
        v = summarize(runs.get(s.key, []), by_key["spread"])
        return v[0] if v else None

    def failed(kind: str) -> Callable[[Server], float | None]:
        def get(s: Server) -> float | None:
            rs = churn.get(kind, {}).get(s.pmx_policy or "", [])
            if not rs:
                return None
            if kind == "memory" and not all(r["restarts"] for r in rs):
                return float("nan")
            if kind == "reload" and not all(
                r["reload_rc"] == 0 and r["replaced"] == cfg.workers for r in rs
            ):
                return float("nan")
            return float(sum(r["failed"] for r in rs))

        return get

    def rss(s: Server) -> float | None:
        values = [r["master_rss"] for r in runs.get(s.key, []) if "master_rss" in r]
        values += [r["master_rss"] for r in churn.get("reload", {}).get(s.pmx_policy or "", [])
                   if r.get("master_rss")]
        if status:
            values.append(status["master_rss"])
        return max(values) / MIB if values else None

    def status_time(_s: Server) -> float | None:
        return status["median"] if status else None

    times: Fmt = lambda v: f"{v:.2f}×"  # noqa: E731
    specs: list[tuple[str, str, Callable[[Server], float | None], str, float, Fmt]] = [
        ("keep-alive throughput", "≥ 1.00× uvicorn", ratio("keepalive_rps"), ">=", 1.00, times),
        ("new-connection throughput", "≥ 0.95× uvicorn", ratio("close_rps"), ">=", 0.95, times),
        ("keep-alive spread (max/min)", "≤ 1.05", spread_of, "<=", 1.05, _spread),
        ("mixed /fast p90, wrk", "≤ 1.0× uvicorn", ratio("mixed_p90"), "<=", 1.0, times),
        ("mixed /fast p99, wrk", "≤ 0.5× uvicorn", ratio("mixed_p99"), "<=", 0.5, times),
        ("mixed /fast p90, per request", "≤ 1.0× uvicorn", ratio("mixed_raw_p90"), "<=", 1.0,
         times),
        ("mixed /fast p99, per request", "≤ 0.5× uvicorn", ratio("mixed_raw_p99"), "<=", 0.5,
         times),
        ("failed requests through reload", "= 0", failed("reload"), "==", 0,
         lambda v: "a reload failed" if v != v else _int(v)),
        ("failed requests through memory restarts", "= 0", failed("memory"), "==", 0,
         lambda v: "no restart happened" if v != v else _int(v)),
        ("master RSS (largest seen)", "≤ 40 MiB", rss, "<=", 40.0, lambda v: f"{v:.1f} MiB"),
        ("`pmx status` wall time", "≤ 0.3 s", status_time, "<=", 0.3, lambda v: f"{v:.3f} s"),
    ]
    rows = []
    for label, threshold, get_value, op, limit, fmt in specs:
        if "per request" in label and all(get_value(s) is None for s in pmx_servers):
            continue  # a run from before count.lua's timed mode
        row = [label, threshold]
        for s in pmx_servers:
            value = get_value(s)
            if value is None:
                row.append("not measured")
                continue
            ok = value == value and {
                ">=": value >= limit, "<=": value <= limit, "==": value == limit,
            }[op]
            row.append(f"{fmt(value)}: {'pass' if ok else '**FAIL**'}")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark pmx against uvicorn --workers, gunicorn + UvicornWorker and "
                    "granian on 127.0.0.1 (see docs/benchmarks.md).",
    )
    parser.add_argument("--workers", type=int, default=2, help="workers per server (default 2)")
    parser.add_argument("--duration", type=int, default=None,
                        help="seconds per measurement (default 10; 3 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="3 s measurements, 1 s warm-up, fewer memory restarts")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repeats of every scenario; medians are reported (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--servers", default="pmx,uvicorn,gunicorn,granian",
                        help="comma-separated: pmx (every --balance policy), pmx-POLICY "
                             "(pmx-round-robin, ...), uvicorn, gunicorn, granian (default: "
                             "all of them that are installed)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated subset of: " + ", ".join(SCENARIOS))
    parser.add_argument("--max-memory", default="64M",
                        help="pmx --max-memory for the memory scenario (default 64M)")
    parser.add_argument("--leak-rate", type=float, default=40.0,
                        help="/leak requests per second in the memory scenario (default 40)")
    parser.add_argument("--mem-restarts", type=int, default=None,
                        help="memory restarts to wait for (default 4; 2 with --quick)")
    parser.add_argument("--busy-cores", type=float, default=0.3,
                        help="a measurement during which other processes used more CPU than "
                             "this (in cores) is taken again (default 0.3)")
    parser.add_argument("--retries", type=int, default=2,
                        help="how often such a measurement is taken again; the quietest "
                             "attempt is kept (default 2)")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before starting each server, wait up to this many seconds for "
                             "the machine to be quiet (default 60)")
    parser.add_argument("--from-results", metavar="DIR",
                        help="measure nothing: write the report of an earlier run from its "
                             "results directory (bench/results/DATE-TIME)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"),
                        help="Markdown report file ('-': stdout only; default docs/benchmarks.md)")
    parser.add_argument("--results-dir", default=str(BENCH / "results"),
                        help="where raw results and server logs go (default bench/results)")
    return parser.parse_args(argv)


def write_report(text: str, output: str) -> None:
    print(text)
    if output != "-":
        Path(output).write_text(text + "\n")
        log(f"wrote {output}")


def rerender(args: argparse.Namespace) -> int:
    """The report of an earlier run, from its results.json."""
    path = Path(args.from_results)
    raw = json.loads((path / "results.json" if path.is_dir() else path).read_text())
    config = dict(raw["config"], scenarios=set(raw["config"]["scenarios"]))
    cfg = Config(**config)
    by_key = {s.key: s for s in servers()}
    chosen = []
    for key in raw["runs"] or {}:
        policy = key[len("pmx-"):] if key.startswith("pmx-") else None
        chosen.append(by_key.get(key) or Server(key, f"pmx {policy}" if policy else key,
                                                lambda port, workers: [], pmx_policy=policy))
    for policy in {p for kind in raw["churn"].values() for p in kind}:
        if f"pmx-{policy}" not in {s.key for s in chosen}:
            chosen.append(Server(f"pmx-{policy}", f"pmx {policy}", lambda port, workers: [],
                                 pmx_policy=policy))
    skipped = [Server(key, label, lambda port, workers: [], available=False, missing=why)
               for key, label, why in raw.get("skipped", [])]
    runs = {s.key: raw["runs"].get(s.key, []) for s in chosen}
    text = report(cfg, chosen, skipped, runs, raw["churn"], raw["status"], raw["machine"],
                  raw.get("argv", ["bench/run.py"]))
    write_report(text, args.output)
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_results:
        return rerender(args)
    duration = args.duration or (3 if args.quick else 10)
    cfg = Config(
        workers=args.workers,
        duration=duration,
        repeats=max(1, args.repeats),
        threads=max(1, args.threads),
        warmup=1 if args.quick else 2,
        max_memory=args.max_memory,
        leak_rate=args.leak_rate,
        mem_restarts=args.mem_restarts or (2 if args.quick else 4),
        mem_timeout=max(30, 4 * duration),
        scenarios={s.strip() for s in args.scenarios.split(",") if s.strip()},
        busy_cores=args.busy_cores,
        retries=max(0, args.retries),
        quiet_wait=max(0.0, args.quiet_wait),
    )
    unknown = cfg.scenarios - set(SCENARIOS)
    if unknown:
        print(f"unknown scenario(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk is not on PATH (Debian: apt-get install wrk)", file=sys.stderr)
        return 1
    try:
        known = {s.key: s for s in servers()}
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    wanted = []
    for key in (k.strip() for k in args.servers.split(",") if k.strip()):
        wanted += [k for k in known if k.startswith("pmx-")] if key == "pmx" else [key]
    bad = [k for k in wanted if k not in known]
    if bad:
        print(f"unknown server(s): {', '.join(bad)}", file=sys.stderr)
        return 2
    chosen = [known[k] for k in known if k in wanted and known[k].available]
    skipped = [known[k] for k in known if k in wanted and not known[k].available]
    for s in skipped:
        log(f"skipping {s.label}: {s.missing}")

    atexit.register(_cleanup)
    signal.signal(signal.SIGTERM, _on_signal)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = Path(args.results_dir) / stamp
    results.mkdir(parents=True, exist_ok=True)
    info = machine()
    log(f"results and logs in {results}")

    runs: dict[str, list[dict[str, Any]]] = {s.key: [] for s in chosen}
    churn: dict[str, dict[str, list[dict[str, Any]]]] = {}
    status: dict[str, Any] | None = None
    command = ["bench/run.py", *argv]
    raw: dict[str, Any] = {
        "argv": command,
        "machine": info,
        "config": cfg.__dict__ | {"scenarios": sorted(cfg.scenarios)},
        "skipped": [[s.key, s.label, s.missing] for s in skipped],
    }
    try:
        runs = measure_servers(cfg, chosen, results)
        policies = [s.pmx_policy for s in chosen if s.pmx_policy]
        for kind, fn in (("reload", scenario_reload), ("memory", scenario_memory)):
            if kind not in cfg.scenarios:
                continue
            churn[kind] = {}
            for repeat in range(cfg.repeats):
                for policy in policies:
                    log(f"{kind} {repeat + 1}/{cfg.repeats}: pmx {policy}")
                    r = fn(cfg, policy, results, f"{kind}-{policy}-{repeat + 1}")
                    churn[kind].setdefault(policy, []).append(r)
                    if kind == "reload":
                        log(f"  reload rc {r['reload_rc']} in {r['reload_seconds']:.2f} s, "
                            f"{r['during']['requests']:,} requests, {r['failed']} failed")
                    else:
                        log(f"  {r['restarts']} memory restarts in {r['seconds']:.1f} s, "
                            f"{r['load']['requests']:,} requests, {r['failed']} failed")
        if "status" in cfg.scenarios and policies:
            log("pmx status timing")
            status = scenario_status(cfg, results)
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        _cleanup()
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        _cleanup()
        return 1
    finally:
        at_end = f"{version('pmx-server')} (commit {git_commit()})"
        if at_end != info["pmx"]:  # someone changed pmx while this ran
            info["pmx at the end of the run"] = at_end
        raw.update(runs=runs, churn=churn, status=status)
        (results / "results.json").write_text(json.dumps(raw, indent=1, default=str))
        _cleanup()

    write_report(report(cfg, chosen, skipped, runs, churn, status, info, command),
                 args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
