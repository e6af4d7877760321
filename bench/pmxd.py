"""pmx under its daemon: reload, memory recycling and `pmx status`.

Each runs in a throwaway ``PMX_HOME`` with ``pmx start``; ``pmx kill`` ends it, and
whatever outlives that is killed. A failed request is a non-2xx response or a socket
error seen by wrk or by the /leak client.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from bench.config import Config
from bench.load import Leaker, Wrk
from bench.measure import wait_quiet
from bench.procs import (
    HOST,
    ROOT,
    BenchError,
    free_port,
    kill_tree,
    log,
    tool,
    wait_gone,
)
from bench.servers import APPS, wait_answer, wait_every_worker

# Load kept on the app during a reload and during memory recycling.
CHURN_KEEPALIVE_CONNECTIONS = 16
CHURN_CLOSE_CONNECTIONS = 8
# How long the load stays on waiting for replaced workers to exit (pmx's default
# --graceful-timeout is 30 s).
GRACEFUL_WAIT = 40.0


def pmx_cli(home: Path, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PMX_HOME=str(home))
    return subprocess.run([*tool("pmx"), *args], cwd=ROOT, env=env, capture_output=True,
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


def pmx_start(home: Path, name: str, port: int, workers: int, policy: str,
              *extra: str) -> dict[str, Any]:
    started = pmx_cli(
        home, "start", APPS["asgi"].pmx, "-i", str(workers), "--name", name,
        "--bind", f"{HOST}:{port}", "--no-access-log", "--balance", policy,
        "--app-dir", str(ROOT), *extra,
    )
    if started.returncode != 0:
        raise BenchError(f"pmx start failed ({started.returncode}): {started.stderr.strip()}")
    wait_answer(port)
    wait_every_worker(port, workers)
    return describe(home, name)


def describe(home: Path, name: str) -> dict[str, Any]:
    out = pmx_cli(home, "describe", name, "--json", timeout=60)
    if out.returncode != 0:
        raise BenchError(f"pmx describe failed ({out.returncode}): {out.stderr.strip()}")
    data: dict[str, Any] = json.loads(out.stdout)
    return data


class Churn:
    """Keep-alive and new-connection load on /fast at once."""

    def __init__(self, port: int, duration: float, threads: int) -> None:
        self.keepalive = Wrk(port, "/fast", CHURN_KEEPALIVE_CONNECTIONS, duration, threads)
        self.close = Wrk(port, "/fast", CHURN_CLOSE_CONNECTIONS, duration, threads, ("close",))

    def result(self, interrupt: bool = True) -> dict[str, Any]:
        if interrupt:
            self.keepalive.interrupt()
            self.close.interrupt()
        ka, cl = self.keepalive.result(), self.close.result()
        return {"keepalive": ka, "close": cl, "requests": ka["requests"] + cl["requests"],
                "failed": ka["failed"] + cl["failed"]}


def scenario_reload(cfg: Config, workers: int, policy: str, results: Path,
                    tag: str) -> dict[str, Any]:
    """Steady load for a baseline window, then the same load through ``pmx reload``."""
    window = max(2, round(cfg.seconds(10) * 0.3))
    with pmx_daemon(results, tag) as home:
        port = free_port()
        before = pmx_start(home, "bench-reload", port, workers, policy)
        old_pids = sorted(w["pid"] for w in before["workers"])
        baseline = Churn(port, window, cfg.threads).result(interrupt=False)
        load = Churn(port, window * 2 + 120, cfg.threads)
        try:
            time.sleep(window / 2)  # load running before the reload starts
            t0 = time.monotonic()
            reloaded = pmx_cli(home, "reload", "bench-reload")
            reload_seconds = time.monotonic() - t0
            # Keep the load on until the replaced workers have exited (their drain is
            # part of the reload), then a little longer.
            drained_seconds = wait_gone(old_pids, GRACEFUL_WAIT)
            time.sleep(window / 2)
        finally:
            during = load.result()
        after = describe(home, "bench-reload")
        master_rss = None
        with contextlib.suppress(psutil.Error, TypeError):
            master_rss = psutil.Process(after["master_pid"]).memory_info().rss
    reasons = [h["reason"] for h in after.get("history", [])]
    return {
        "policy": policy,
        "reload_rc": reloaded.returncode,
        "reload_stderr": reloaded.stderr.strip(),
        "reload_seconds": reload_seconds,
        "drained_after": drained_seconds,
        "old_pids": old_pids,
        "new_pids": sorted(w["pid"] for w in after["workers"]),
        "replaced": reasons.count("reload"),
        "workers": workers,
        "baseline": baseline,
        "during": during,
        "failed": during["failed"],
        "master_rss": master_rss,
    }


def scenario_memory(cfg: Config, workers: int, policy: str, results: Path,
                    tag: str) -> dict[str, Any]:
    """/fast load plus a client leaking 1 MiB per request, with --max-memory set low, until
    ``cfg.mem_restarts`` memory replacements are recorded (or ``cfg.mem_timeout``)."""
    with pmx_daemon(results, tag) as home:
        port = free_port()
        pmx_start(home, "bench-mem", port, workers, policy, "--max-memory", cfg.max_memory)
        load = Churn(port, cfg.mem_timeout + 120, cfg.threads)
        leaker = Leaker(port, cfg.leak_rate)
        leaker.start()
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < cfg.mem_timeout:
                time.sleep(1.0)
                history = describe(home, "bench-mem").get("history", [])
                if sum(h["reason"] == "memory" for h in history) >= cfg.mem_restarts:
                    break
            leaker.stop()
            # Keep the /fast load on until every replaced worker has exited.
            replaced = [h["pid"] for h in describe(home, "bench-mem").get("history", [])]
            drained_seconds = wait_gone(replaced, GRACEFUL_WAIT)
            time.sleep(1.0)
        finally:
            leaker.stop()
            churn = load.result()
        elapsed = time.monotonic() - t0
        history = describe(home, "bench-mem").get("history", [])
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
        "load": churn,
        "drained_after": drained_seconds,
        "leak_ok": leaker.ok,
        "leak_failed": leaker.failed,
        "leak_errors": leaker.errors,
        "failed": churn["failed"] + leaker.failed,
    }


def scenario_status(cfg: Config, workers: int, policy: str, results: Path) -> dict[str, Any]:
    """``pmx status`` wall time (median of 5) and the daemon-run master's RSS, with a
    daemon running one idle app."""
    with pmx_daemon(results, "status") as home:
        port = free_port()
        pmx_start(home, "bench-status", port, workers, policy)
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
        "policy": policy,
        "workers": workers,
        "times": times,
        "median": statistics.median(times),
        "other_cores_before": quiet,
        "master_rss": master_rss,
        "daemon_rss": daemon_rss,
        "worker_rss": worker_rss,
    }


def run_daemon_scenarios(cfg: Config, workers: int, policies: list[str], default: str,
                         results: Path) -> tuple[dict[str, dict[str, list[dict[str, Any]]]],
                                                 dict[str, Any] | None]:
    """Reload and memory recycling once per repeat for each policy, then the status
    timing; returns ({kind: {policy: [records]}}, status)."""
    churn: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for kind, fn in (("reload", scenario_reload), ("memory", scenario_memory)):
        if kind not in cfg.daemon or not policies:
            continue
        churn[kind] = {}
        for repeat in range(cfg.repeats):
            for policy in policies:
                log(f"{kind} {repeat + 1}/{cfg.repeats}: pmx {policy}, {workers} workers")
                r = fn(cfg, workers, policy, results, f"{kind}-{policy}-{repeat + 1}")
                churn[kind].setdefault(policy, []).append(r)
                if kind == "reload":
                    log(f"  reload rc {r['reload_rc']} in {r['reload_seconds']:.2f} s, "
                        f"{r['during']['requests']:,} requests, {r['failed']} failed")
                else:
                    log(f"  {r['restarts']} memory restarts in {r['seconds']:.1f} s, "
                        f"{r['load']['requests']:,} requests, {r['failed']} failed")
    status = None
    if "status" in cfg.daemon and policies:
        log("pmx status timing")
        status = scenario_status(cfg, workers, default, results)
    return churn, status
