"""Processes: everything the benchmark starts is registered here and killed at exit.

Every server and load generator runs in its own session (its own process group), so
that stopping one can take its whole tree with it. ``cleanup()`` runs at exit and on
SIGTERM; no process the harness started outlives it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
MIB = 1024 * 1024


class BenchError(Exception):
    pass


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tool(name: str) -> list[str]:
    """The argv that runs an installed command of this interpreter's environment."""
    path = BIN / name
    return [str(path)] if path.exists() else [sys.executable, "-m", name]


_LIVE: set[subprocess.Popen[Any]] = set()


def spawn(argv: list[str], log_path: Path | None = None, env: dict[str, str] | None = None,
          capture: bool = False) -> subprocess.Popen[Any]:
    """Start a process in its own session; its output goes to ``log_path`` (appended),
    to pipes (``capture``) or nowhere."""
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


def forget(proc: subprocess.Popen[Any]) -> None:
    """A process that has been reaped by its owner."""
    _LIVE.discard(proc)


def _tree(pid: int) -> list[psutil.Process]:
    """A process and its descendants (none if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def kill_tree(pid: int) -> None:
    """SIGKILL a process, its descendants and its process group."""
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def stop_all(procs: list[subprocess.Popen[Any]], timeout: float = 30.0) -> list[int | None]:
    """SIGTERM them all at once, wait up to ``timeout`` for each, then kill whole groups.

    Returns the exit codes seen after SIGTERM, None where a process had to be killed."""
    trees: list[list[psutil.Process]] = []
    for proc in procs:
        try:
            trees.append(psutil.Process(proc.pid).children(recursive=True))
        except psutil.Error:
            trees.append([])
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for proc, descendants in zip(procs, trees, strict=True):
        try:
            code: int | None = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
        kill_tree(proc.pid)
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        forget(proc)
        codes.append(code)
    return codes


def cleanup() -> None:
    for proc in list(_LIVE):
        kill_tree(proc.pid)
        forget(proc)


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_handlers() -> None:
    """SIGTERM ends the run like Ctrl-C: the main loop's handler cleans up."""
    signal.signal(signal.SIGTERM, _on_signal)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


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


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants."""
    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total
