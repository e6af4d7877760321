"""The ``rebalance`` family (pmx only): kept-alive connections through a scale-up and a
reload, and keep-alive throughput, each with ``--rebalance`` on and off.

The scale-up and reload scenarios use their own client, a pool of raw keep-alive
connections driven from one asyncio loop in a thread (``Pool``), because wrk reconnects
silently when the server closes a connection and names no worker. Each connection sends
GET /fast, reads the whole response, and sends again. The pool counts, per quarter
second, the responses each worker (``x-pid``) gave, and which worker each connection is
on; a response that says ``Connection: close``, or an EOF, is a connection *closed by
the server* (the client reconnects), any other error a *failed* request.

The app runs under the daemon (``pmx start``), as in the reload family, and its
workers' readiness is read from the admin endpoint's ``/workers``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.config import Config
from bench.figures import fmt_2, table
from bench.load import Wrk
from bench.pmxd import pmx_cli, pmx_daemon, pmx_start
from bench.procs import HOST, BenchError, free_port, log, wait_gone
from bench.scenarios import REBALANCE, Moving

BUCKET = 0.25  # seconds per time bucket of the pool's counts
STEADY_TURNS = 4  # wrk runs per mode in the steady scenario, alternating
MODES = {"on": "--rebalance=all", "off": "--rebalance=off"}


class Pool:
    """``n`` kept-alive connections looping on ``path``, in a thread of their own."""

    def __init__(self, port: int, n: int, path: str = "/fast") -> None:
        self.port, self.n, self.path = port, n, path
        self.t0 = time.monotonic()
        self.buckets: collections.defaultdict[int, collections.Counter[str]] = \
            collections.defaultdict(collections.Counter)
        self.on: list[str] = [""] * n  # the worker each connection is on now
        self.requests = self.closed = self.failed = 0
        self._stop = False
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()))

    def __enter__(self) -> Pool:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(30)

    def spread_now(self) -> collections.Counter[str]:
        """Connections per worker."""
        return collections.Counter(p for p in self.on if p)

    async def _run(self) -> None:
        await asyncio.gather(*(self._connection(i) for i in range(self.n)))

    async def _connection(self, i: int) -> None:
        request = f"GET {self.path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        stream = None
        while not self._stop:
            try:
                if stream is None:
                    stream = await asyncio.open_connection(HOST, self.port)
                reader, writer = stream
                writer.write(request)
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                fields = dict(line.split(":", 1) for line in head.split("\r\n")[1:] if ":" in line)
                await reader.readexactly(int(fields.get("content-length", "0")))
                pid = fields.get("x-pid", "").strip()
                self.requests += 1
                self.on[i] = pid
                self.buckets[int((time.monotonic() - self.t0) / BUCKET)][pid] += 1
                if "close" in fields.get("connection", ""):
                    self.closed += 1
                    writer.close()
                    stream = None
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    self.failed += 1  # closed in the middle of a response
                else:
                    self.closed += 1  # closed between two requests
                stream = None
            except OSError:
                self.failed += 1
                stream = None
        if stream is not None:
            stream[1].close()

    def per_worker(self, since: float) -> list[dict[str, int]]:
        """Responses per worker in each bucket from ``since`` (monotonic time)."""
        first = int((since - self.t0) / BUCKET)
        last = max(self.buckets, default=first)
        return [dict(self.buckets.get(b, {})) for b in range(first, last + 1)]


def _snapshot(admin: str) -> dict[str, Any]:
    """The master's ``/workers`` snapshot."""
    with urllib.request.urlopen(f"http://{admin}/workers", timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


def _workers(admin: str) -> list[dict[str, Any]]:
    return list(_snapshot(admin)["workers"])


def _serving(admin: str, count: int, old: set[str]) -> list[dict[str, Any]] | None:
    """The workers in rotation once ``count`` are and none of ``old`` is left, if a
    reload replaces them; old ones first."""
    workers = [w for w in _safe_workers(admin)
               if w["state"] == "ready" and w["health"] == "ok"]
    if len(workers) < count:
        return None
    return sorted(workers, key=lambda w: str(w["pid"]) not in old)


def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    raise BenchError(f"timed out after {timeout:g} s waiting for {what}")


def run_moving(cfg: Config, scenario: Moving, mode: str, results: Path,
               tag: str) -> dict[str, Any]:
    """A pool through ``pmx scale`` or ``pmx reload`` under the daemon."""
    settle = 1.0 if cfg.quick else 2.0
    with pmx_daemon(results, tag) as home:
        port = free_port()
        described = pmx_start(home, "bench-move", port, scenario.workers, "least-busy",
                              MODES[mode])
        admin = described["admin"]
        old = {str(w["pid"]) for w in described["workers"]}
        with Pool(port, scenario.connections) as pool:
            time.sleep(settle)
            began = time.monotonic()
            if scenario.action == "scale":
                done = pmx_cli(home, "scale", "bench-move", str(scenario.to))
            else:
                done = pmx_cli(home, "reload", "bench-move")
            if done.returncode != 0:
                raise BenchError(f"pmx {scenario.action} failed: {done.stderr.strip()}")
            replaced = old if scenario.action == "reload" else set()
            serving = _until(
                lambda: _serving(admin, scenario.to, old)
                if not replaced & {str(w["pid"]) for w in _safe_workers(admin)
                                   if w["state"] == "ready"} else None,
                60, "the workers")
            ready = time.monotonic()
            gone = wait_gone([int(p) for p in old], 40) if scenario.action == "reload" else 0
            time.sleep(max(0.0, ready + 1.0 - time.monotonic()))
            at_one_second = pool.spread_now()
            time.sleep(settle)
            spread_end = pool.spread_now()
            moved = _snapshot(admin).get("connections_moved", 0)
        per_worker = pool.per_worker(began)
    new = {str(w["pid"]) for w in serving} - old
    counts = [at_one_second.get(str(w["pid"]), 0) for w in serving]
    return {
        "mode": mode, "action": scenario.action, "ready_after": ready - began,
        "old_gone_after": gone, "requests": pool.requests, "closed": pool.closed,
        "failed": pool.failed, "old": sorted(old), "new": sorted(new),
        "workers": [str(w["pid"]) for w in serving],
        "connections_at_1s": counts,
        "spread_at_1s": max(counts) / min(counts) if min(counts) else None,
        "connections_at_end": [spread_end.get(str(w["pid"]), 0) for w in serving],
        "per_worker": per_worker,
        "moved": moved,
    }


def _safe_workers(admin: str) -> list[dict[str, Any]]:
    try:
        return _workers(admin)
    except OSError:
        return []


def run_steady(cfg: Config, scenario: Moving, results: Path,
               tag: str) -> dict[str, dict[str, Any]]:
    """wrk's keep-alive throughput, nothing scaled: the price of being ready to move.
    Two apps run under one daemon, one with rebalancing on and one off, and are loaded
    in turn, STEADY_TURNS times each: on a shared machine the CPU left to the benchmark
    drifts, and alternating keeps the drift out of the ratio as far as it can."""
    with pmx_daemon(results, tag) as home:
        ports, admins = {}, {}
        for mode, flag in MODES.items():
            ports[mode] = free_port()
            described = pmx_start(home, f"bench-{mode}", ports[mode], scenario.workers,
                                  "least-busy", flag)
            admins[mode] = described["admin"]
            Wrk(ports[mode], "/fast", scenario.connections, cfg.warmup, cfg.threads).result()
        rps: dict[str, list[float]] = {mode: [] for mode in MODES}
        failed = dict.fromkeys(MODES, 0)
        seconds = cfg.seconds(scenario.duration)
        for turn in range(STEADY_TURNS):
            for mode in list(MODES)[:: 1 if turn % 2 == 0 else -1]:
                record = Wrk(ports[mode], "/fast", scenario.connections, seconds,
                             cfg.threads).result()
                rps[mode].append(record["rps"])
                failed[mode] += record["failed"]
        return {mode: {"mode": mode, "rps": statistics.median(rps[mode]), "turns": rps[mode],
                       "failed": failed[mode],
                       "moved": _snapshot(admins[mode]).get("connections_moved", 0)}
                for mode in MODES}


def run_rebalance(cfg: Config, results: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every scenario of the family, on and off, ``cfg.repeats`` times."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for scenario in REBALANCE:
        for repeat in range(cfg.repeats):
            tag = f"{scenario.name}-{repeat + 1}"
            if scenario.action == "steady":
                records = run_steady(cfg, scenario, results, tag)
            else:
                # Each mode first in every other repeat: a run right after another's
                # teardown is not the same as one on a machine at rest.
                modes = list(MODES)[:: 1 if repeat % 2 == 0 else -1]
                records = {m: run_moving(cfg, scenario, m, results, f"{tag}-{m}")
                           for m in modes}
            for mode, r in records.items():
                out.setdefault(scenario.name, {}).setdefault(mode, []).append(r)
                log(f"  {scenario.name}, rebalance {mode}: " + _summary(r))
    return out


def _summary(r: dict[str, Any]) -> str:
    if "rps" in r:
        turns = ", ".join(f"{v:,.0f}" for v in r["turns"])
        return f"median {r['rps']:,.0f} req/s ({turns}), {r['failed']} failed, {r['moved']} moved"
    return (f"connections per worker 1 s after ready {r['connections_at_1s']}, "
            f"{r['closed']} closed by the server, {r['failed']} failed")


def rebalance_section(data: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    """The report's tables for the family."""
    if not data:
        return []
    out = ["## pmx only: kept-alive connections that move (`rebalance`)\n"]
    for scenario in REBALANCE:
        runs = data.get(scenario.name)
        if not runs:
            continue
        out.append(f"`{scenario.name}`: {scenario.about}.\n")
        if scenario.action == "steady":
            rows = [[mode, ", ".join(f"{r['rps']:,.0f}" for r in rs),
                     str(sum(r["failed"] for r in rs)), str(sum(r["moved"] for r in rs))]
                    for mode, rs in runs.items()]
            ratios = [on["rps"] / off["rps"]
                      for on, off in zip(runs.get("on", []), runs.get("off", []), strict=False)]
            if ratios:
                rows.append(["on ÷ off", ", ".join(fmt_2(r) for r in ratios), "", ""])
            out += [f"Each run: the two apps side by side under one daemon, loaded in turn "
                    f"{STEADY_TURNS} times each; the median per run.\n",
                    table(["rebalance", "req/s, median per run", "failed", "moved"], rows), ""]
            continue
        rows = []
        for mode, rs in runs.items():
            for r in rs:
                spread = r["spread_at_1s"]
                rows.append([mode, f"{r['ready_after']:.2f}",
                             " ".join(map(str, r["connections_at_1s"])),
                             fmt_2(spread) if spread else "∞",
                             f"{r['requests']:,}", str(r["closed"]), str(r["failed"]),
                             str(r["moved"])])
        out += [table(["rebalance", "ready after (s)", "connections per worker 1 s later",
                       "max/min", "requests", "closed by the server", "failed", "moved"],
                      rows), ""]
        if scenario.action == "scale":
            out += _timeline(runs)
    return out


def _timeline(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Requests per worker in each second from the scale-up, first run of each mode."""
    out = []
    for mode, rs in runs.items():
        r = rs[0]
        workers = r["workers"]
        per = r["per_worker"]
        per_second = int(1 / BUCKET)
        rows = []
        for second in range(0, len(per) // per_second):
            window = per[second * per_second:(second + 1) * per_second]
            rows.append([f"{second}–{second + 1}",
                         *[f"{sum(b.get(w, 0) for b in window):,}" for w in workers]])
        out += [f"Requests per worker each second from `pmx scale`, rebalance {mode} "
                "(new workers last):\n",
                table(["s", *[f"pid {w}" + (" (new)" if w in r["new"] else "")
                              for w in workers]], rows), ""]
    return out
