"""The servers compared: how each is started, when it counts as ready, how it stops.

Every server is given the same app with the same number of workers on a free port of
127.0.0.1: pmx once per ``--balance`` policy that ``pmx run --help`` lists (the default
one is labelled plain "pmx"), ``uvicorn --workers``, gunicorn with
``uvicorn_worker.UvicornWorker`` and granian, each when it is installed.
"""

from __future__ import annotations

import http.client
import importlib.util
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.load import burst, get
from bench.procs import (
    HOST,
    ROOT,
    BenchError,
    free_port,
    log,
    spawn,
    stop_all,
    tool,
    tree_cpu_seconds,
)


@dataclass(frozen=True)
class App:
    """An app of bench/: the ASGI callable servers are given, and what pmx is given
    (the same, except for the WSGI app, whose WSGI callable pmx wraps itself)."""

    asgi: str
    pmx: str


APPS = {
    "asgi": App("bench.app:app", "bench.app:app"),
    "wsgi": App("bench.wsgi_app:asgi", "bench.wsgi_app:app"),
}


@dataclass
class Server:
    key: str
    label: str
    argv: Callable[[int, int, App], list[str]]
    pmx_policy: str | None = None
    default: bool = False  # pmx's default policy
    available: bool = True
    missing: str = ""


def pmx_policies() -> tuple[list[str], str]:
    """The --balance choices and the default, as `pmx run --help` lists them."""
    out = subprocess.run([*tool("pmx"), "run", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    match = re.search(r"--balance\s+\[([^\]]+)\](.*?)\[default:\s*([^\]]+?)\s*\]", out.stdout,
                      re.DOTALL)
    if not match:
        raise BenchError(f"cannot find the --balance choices in 'pmx run --help':\n{out.stdout}"
                         f"{out.stderr}")
    choices = [p.strip() for p in match.group(1).split("|") if p.strip()]
    return choices, match.group(3).strip()


def pmx_label(policy: str, default: str) -> str:
    return "pmx" if policy == default else f"pmx {policy}"


def servers() -> list[Server]:
    def pmx(policy: str) -> Callable[[int, int, App], list[str]]:
        return lambda port, workers, app: [
            *tool("pmx"), "run", app.pmx, "-i", str(workers), "--bind", f"{HOST}:{port}",
            "--no-access-log", "--balance", policy, "--name", "bench",
        ]

    found = {m: importlib.util.find_spec(m) is not None
             for m in ("uvicorn", "gunicorn", "uvicorn_worker", "granian")}
    policies, default = pmx_policies()
    # The default policy first: it is the "pmx" of every ratio.
    policies.sort(key=lambda p: p != default)
    return [
        *(Server(f"pmx-{policy}", pmx_label(policy, default), pmx(policy), pmx_policy=policy,
                 default=policy == default)
          for policy in policies),
        Server(
            "uvicorn", "uvicorn --workers",
            lambda port, workers, app: [
                sys.executable, "-m", "uvicorn", app.asgi, "--host", HOST, "--port", str(port),
                "--workers", str(workers), "--no-access-log",
            ],
            available=found["uvicorn"], missing="uvicorn is not installed",
        ),
        Server(
            "gunicorn", "gunicorn + UvicornWorker",
            # gunicorn writes no access log unless --access-logfile is given.
            lambda port, workers, app: [
                sys.executable, "-m", "gunicorn", app.asgi, "-k",
                "uvicorn_worker.UvicornWorker", "-w", str(workers), "-b", f"{HOST}:{port}",
            ],
            available=found["gunicorn"] and found["uvicorn_worker"],
            missing="gunicorn or uvicorn-worker is not installed",
        ),
        Server(
            "granian", "granian",
            lambda port, workers, app: [
                *tool("granian"), "--interface", "asgi", "--host", HOST, "--port", str(port),
                "--workers", str(workers), "--no-access-log", app.asgi,
            ],
            available=found["granian"], missing="granian is not installed",
        ),
    ]


def wait_answer(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 90.0,
                log_path: Path | None = None) -> None:
    """Poll with GET /fast until the server answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"server exited with code {proc.returncode} before it was ready"
                             + (f"; see {log_path}" if log_path else ""))
        try:
            status, _pid = get(port)
            if status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"nothing answered on port {port} after {timeout:g} s")
        time.sleep(0.05)


# Seconds without a new worker answering after which a pmx master's workers are taken
# to be spares it keeps for later (wait_every_worker).
PATIENCE = 2.0


def wait_every_worker(port: int, workers: int, pid: int | None = None) -> set[str]:
    """Until every worker has answered. Requests to /slow hold a worker's event loop for
    50 ms, so concurrent ones reach the other workers even with servers whose workers
    race for accept().

    With ``pid`` (a pmx master, which may pack: with more workers than CPUs it hands
    new connections to one worker per CPU, and to a spare only while one of those is
    held or has no thread free, so a WSGI app's /slow, a sleep in its thread pool,
    reaches only the workers whose threads it fills): once no new worker has answered
    for PATIENCE seconds, the server's processes are waited on to go idle instead
    (every worker has booted)."""
    seen: set[str] = set()
    start = last_new = time.monotonic()
    while len(seen) < workers and time.monotonic() < start + 30:
        answered = burst(port, 2 * workers, "/slow")
        if answered - seen:
            last_new = time.monotonic()
        seen |= answered
        if pid is not None and len(seen) < workers and time.monotonic() > last_new + PATIENCE:
            wait_idle(pid)
            return seen
    if len(seen) < workers:
        log(f"warning: only {len(seen)} of {workers} workers answered on port {port}")
    return seen


def wait_idle(pid: int, timeout: float = 15.0, window: float = 0.25,
              idle_share: float = 0.05) -> float:
    """Until the server's processes, all together, used less than ``idle_share`` of a
    core over ``window`` seconds: its workers have finished booting. No request is sent.
    Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = tree_cpu_seconds(pid)
        time.sleep(window)
        if tree_cpu_seconds(pid) - before < idle_share * window:
            break
    return time.monotonic() - t0


@dataclass
class Running:
    server: Server
    port: int
    proc: subprocess.Popen[Any]
    master: psutil.Process | None  # pmx's master, whose own CPU and RSS are reported


def start(server: Server, workers: int, app: App, log_path: Path,
          every_worker: bool = True) -> Running:
    """Start one server and wait until it answers (and, with ``every_worker``, until
    every worker has answered; without, until its processes are idle)."""
    port = free_port()
    proc = spawn(server.argv(port, workers, app), log_path=log_path)
    try:
        wait_answer(port, proc, log_path=log_path)
        if every_worker:
            wait_every_worker(port, workers, proc.pid if server.pmx_policy else None)
        else:
            wait_idle(proc.pid)
    except BaseException:
        stop([Running(server, port, proc, None)])
        raise
    master = psutil.Process(proc.pid) if server.pmx_policy else None
    return Running(server, port, proc, master)


def stop(running: list[Running]) -> None:
    codes = stop_all([r.proc for r in running])
    for r, code in zip(running, codes, strict=True):
        if code is None:
            log(f"warning: {r.server.label} did not stop within 30 s of SIGTERM; killed")
