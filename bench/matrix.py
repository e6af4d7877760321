"""The matrix: every scenario, at every worker count, against every server.

For each worker count and each repeat, every server is started (all of them at once,
idle but for the one under load) and each scenario then runs on one server after the
other, so that the servers compared in a scenario are measured within a minute or two
of each other: on a shared machine the CPU left to the benchmark drifts, and this keeps
the drift out of the ratios as far as possible. The order of the servers rotates between
repeats. The WSGI family gets its own set of servers, serving bench/wsgi_app.py; the
connection-spread family starts each server afresh for its one burst.

Results: ``runs[scenario][str(workers)][server key]`` is the list of one record per
repeat.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from bench.config import Config
from bench.load import Wrk
from bench.measure import measure, run_burst, run_clients, wait_quiet
from bench.procs import log
from bench.scenarios import Scenario
from bench.servers import APPS, Running, Server, start, stop

Runs = dict[str, dict[str, dict[str, list[dict[str, Any]]]]]
WARMUP_CONNECTIONS = 64


def _summary(record: dict[str, Any]) -> str:
    if "fast" not in record:
        counts = sorted(record["pids"].values(), reverse=True)
        return f"connections per worker {counts}, {record['failed']} failed"
    fast = record["fast"]
    raw = fast.get("raw_latency_us", {}).get("p99")
    timed = f", p99 {raw / 1000:.2f} ms per request" if raw is not None else ""
    return f"{fast['rps']:,.0f} req/s{timed}"


def _record(runs: Runs, scenario: Scenario, workers: int, server: Server,
            record: dict[str, Any], repeat: int) -> None:
    record["repeat"] = repeat + 1
    runs.setdefault(scenario.name, {}).setdefault(str(workers), {}) \
        .setdefault(server.key, []).append(record)
    log(f"  {scenario.name}, {workers} workers: {server.label}: {_summary(record)}")


def _run_wrk_group(cfg: Config, order: list[Server], group: list[Scenario], workers: int,
                   repeat: int, results: Path, runs: Runs) -> None:
    app = group[0].app
    running: list[Running] = []
    try:
        for server in order:
            log_path = results / f"{server.key}-{app}-w{workers}-{repeat + 1}.log"
            r = start(server, workers, APPS[app], log_path)
            running.append(r)
            if cfg.warmup:
                Wrk(r.port, "/fast", WARMUP_CONNECTIONS, cfg.warmup, cfg.threads).result()
        for scenario in group:
            seconds = cfg.seconds(scenario.duration)
            for r in running:
                wait_quiet(cfg)
                run = partial(run_clients, scenario, r.port, workers, seconds, cfg.threads)
                record = measure(run, r, cfg, scenario.name)
                _record(runs, scenario, workers, r.server, record, repeat)
    finally:
        stop(running)


def _run_burst(cfg: Config, order: list[Server], scenario: Scenario, workers: int,
               repeat: int, results: Path, runs: Runs) -> None:
    for server in order:
        wait_quiet(cfg)
        log_path = results / f"{server.key}-{scenario.name}-w{workers}-{repeat + 1}.log"
        r = start(server, workers, APPS[scenario.app], log_path, every_worker=False)
        try:
            # A fresh server for every attempt would be needed to measure it again.
            record = measure(partial(run_burst, scenario, r.port, workers), r, cfg,
                             scenario.name, retries=0)
        finally:
            stop([r])
        _record(runs, scenario, workers, server, record, repeat)


def measure_matrix(cfg: Config, chosen: list[Server], scenarios: list[Scenario],
                   results: Path) -> Runs:
    runs: Runs = {}
    if not chosen:
        return runs
    for workers in cfg.workers:
        here = [s for s in scenarios if s.runs_at(workers)]
        groups = [[s for s in here if s.kind == "wrk" and s.app == app] for app in APPS]
        for repeat in range(cfg.repeats):
            shift = repeat % len(chosen)
            order = chosen[shift:] + chosen[:shift]
            log(f"{workers} workers, repeat {repeat + 1}/{cfg.repeats}: "
                + ", ".join(s.label for s in order))
            for group in groups:
                if group:
                    _run_wrk_group(cfg, order, group, workers, repeat, results, runs)
            for scenario in here:
                if scenario.kind == "connections":
                    _run_burst(cfg, order, scenario, workers, repeat, results, runs)
    return runs
