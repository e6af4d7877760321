"""One measurement: a scenario's clients against one running server, with the CPU the
server spent, the CPU the rest of the machine took meanwhile, and what the hypervisor
stole.

The machine may be shared. Before a measurement the harness waits (up to
``cfg.quiet_wait`` s) until other processes use less than ``cfg.busy_cores``; a
measurement during which they used more is taken again (up to ``cfg.retries`` times)
and the quietest attempt is kept.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable
from typing import Any

import psutil

from bench.config import Config
from bench.load import Wrk, connection_burst
from bench.procs import log, tree_cpu_seconds
from bench.scenarios import NEW, Client, Scenario
from bench.servers import Running


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


class Interference:
    """How much CPU the rest of the machine used during a measurement, in cores: all
    busy CPU time minus this harness, its children and the server's processes."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.t0 = time.monotonic()
        self.busy0, self.own0 = _busy_seconds(), _own_seconds()
        self.tree0, self.steal0 = tree_cpu_seconds(server_pid), _steal_seconds()

    def cores(self) -> tuple[float, float]:
        """(cores used elsewhere, of which stolen by the hypervisor)."""
        elapsed = time.monotonic() - self.t0
        if elapsed <= 0:
            return 0.0, 0.0
        other = ((_busy_seconds() - self.busy0) - (_own_seconds() - self.own0)
                 - (tree_cpu_seconds(self.server_pid) - self.tree0))
        return max(0.0, other / elapsed), max(0.0, (_steal_seconds() - self.steal0) / elapsed)


def wait_quiet(cfg: Config) -> float | None:
    """Wait (up to cfg.quiet_wait seconds) until the rest of the machine uses less than
    cfg.busy_cores of CPU over half a second; returns the last reading (None: no wait)."""
    if cfg.quiet_wait <= 0:
        return None
    deadline = time.monotonic() + cfg.quiet_wait
    while True:
        t0, busy0, own0 = time.monotonic(), _busy_seconds(), _own_seconds()
        time.sleep(0.5)
        other = ((_busy_seconds() - busy0) - (_own_seconds() - own0)) / (time.monotonic() - t0)
        if other < cfg.busy_cores or time.monotonic() > deadline:
            if other >= cfg.busy_cores:
                log(f"  the machine is still busy ({other:.2f} cores used elsewhere); going on")
            return other


def spread(pids: dict[str, int], workers: int) -> float:
    """max/min of what each worker served (inf if a worker served nothing)."""
    counts = [n for pid, n in pids.items() if pid != "none"]
    if len(counts) < workers or min(counts) == 0:
        return float("inf")
    return max(counts) / min(counts)


def _wrk(client: Client, port: int, workers: int, seconds: float, threads: int) -> Wrk:
    args = ["close"] if client.mode == NEW else []
    if client.fast:
        args.append("timed")
    if client.delay_ms:
        args.append(f"delay={client.delay_ms}")
    return Wrk(port, client.path, client.connections(workers), seconds, threads, tuple(args))


def run_clients(scenario: Scenario, port: int, workers: int, seconds: float,
                threads: int) -> dict[str, Any]:
    """The load clients start first and stop when the fast one has finished."""
    [fast_client] = [c for c in scenario.clients if c.fast]
    load = [_wrk(c, port, workers, seconds + 5, threads)
            for c in scenario.clients if not c.fast]
    try:
        fast = _wrk(fast_client, port, workers, seconds, threads).result()
    finally:
        for w in load:
            w.interrupt()
    loads = [w.result() for w in load]
    fast["spread"] = spread(fast["pids"], workers)
    return {
        "fast": fast,
        "load": loads,
        "load_rps": sum(r["rps"] for r in loads),
        "requests": fast["requests"] + sum(r["requests"] for r in loads),
        "failed": fast["failed"] + sum(r["failed"] for r in loads),
        "seconds": fast["duration_us"] / 1e6,
    }


def run_burst(scenario: Scenario, port: int, workers: int) -> dict[str, Any]:
    result = connection_burst(port, scenario.connections)
    result["spread"] = spread(result["pids"], workers)
    return result


def measure(run: Callable[[], dict[str, Any]], target: Running, cfg: Config, name: str,
            retries: int | None = None) -> dict[str, Any]:
    """Run one measurement; if other processes used more than cfg.busy_cores of CPU
    meanwhile, run it again (up to ``retries`` times) and keep the quietest attempt."""
    retries = cfg.retries if retries is None else retries
    attempts: list[dict[str, Any]] = []
    for attempt in range(retries + 1):
        if attempt:
            wait_quiet(cfg)
        master = target.master
        before = master.cpu_times() if master is not None else None
        others = Interference(target.proc.pid)
        tree_before = tree_cpu_seconds(target.proc.pid)
        result = run()
        result["other_cores"], result["steal_cores"] = others.cores()
        if result.get("requests"):
            used = tree_cpu_seconds(target.proc.pid) - tree_before
            result["server_cpu_us"] = used / result["requests"] * 1e6
        if master is not None and before is not None:
            with contextlib.suppress(psutil.Error):
                after = master.cpu_times()
                used = (after.user - before.user) + (after.system - before.system)
                if "seconds" in result:  # a burst is too short for a share of a core
                    result["master_cpu"] = used / result["seconds"]
                result["master_rss"] = master.memory_info().rss
        attempts.append(result)
        if result["other_cores"] < cfg.busy_cores:
            break
        log(f"  {name}: {result['other_cores']:.2f} cores used elsewhere meanwhile"
            + ("; measuring again" if attempt < retries else "; keeping the quietest"))
    best = min(attempts, key=lambda r: r["other_cores"])
    best["attempts"] = len(attempts)
    return best
