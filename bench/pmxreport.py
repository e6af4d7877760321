"""The report's pmx-only section: reload, memory recycling, the master's CPU and RSS,
and `pmx status`; one column per pmx policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.config import Config
from bench.figures import Fmt, cell, fmt_1, fmt_2, fmt_int, mmm, summarize, table
from bench.procs import MIB
from bench.scenarios import Scenario
from bench.servers import Server
from bench.targets import Churn, Runs

Rows = list[list[str]]


def daemon_rows(churn: Churn, workers: int, pmx_servers: list[Server]) -> Rows:
    """Reload and memory recycling figures."""
    rows: Rows = []

    def row(label: str, per_server: Callable[[list[dict[str, Any]]], str | None],
            kind: str) -> None:
        cells = [per_server(churn.get(kind, {}).get(s.pmx_policy or "", []))
                 for s in pmx_servers]
        if any(c is not None for c in cells):
            rows.append([label, *[c if c is not None else "—" for c in cells]])

    def over(get: Callable[[dict[str, Any]], Any], fmt: Fmt) -> Callable[[list[Any]], Any]:
        return lambda rs: cell(mmm([get(r) for r in rs]), fmt) if rs else None

    def total(get: Callable[[dict[str, Any]], Any]) -> Callable[[list[Any]], Any]:
        return lambda rs: fmt_int(sum(get(r) for r in rs)) if rs else None

    def p99(part: str, kind: str) -> Callable[[dict[str, Any]], float]:
        return lambda r: r[part][kind]["latency_us"]["p99"] / 1000

    row("**reload**: failed requests (sum over runs)", total(lambda r: r["failed"]), "reload")
    row("reload: requests served meanwhile (sum)", total(lambda r: r["during"]["requests"]),
        "reload")
    row(f"reload: runs that replaced all {workers} workers",
        lambda rs: f"{sum(r['reload_rc'] == 0 and r['replaced'] == workers for r in rs)} "
                   f"of {len(rs)}" if rs else None, "reload")
    row("reload: `pmx reload` wall time (s)", over(lambda r: r["reload_seconds"], fmt_2),
        "reload")
    row("reload: replaced workers gone, s after `pmx reload` returned",
        over(lambda r: r["drained_after"], fmt_2), "reload")
    for part, when in (("baseline", "steady"), ("during", "through the reload")):
        for kind, what in (("keepalive", "keep-alive"), ("close", "new-connection")):
            row(f"reload: {what} p99 (ms), {when}", over(p99(part, kind), fmt_2), "reload")
    row("**memory**: failed requests (sum over runs)", total(lambda r: r["failed"]), "memory")
    row("memory: requests served meanwhile (sum)",
        total(lambda r: r["load"]["requests"] + r["leak_ok"]), "memory")
    row("memory: restarts with reason `memory`, per run",
        lambda rs: ", ".join(str(r["restarts"]) for r in rs) if rs else None, "memory")
    row("memory: replaced workers gone, s after the last restart was seen",
        over(lambda r: r["drained_after"], fmt_2), "memory")
    row("master RSS after the reload runs, under the daemon (MiB)",
        over(lambda r: r["master_rss"] / MIB if r.get("master_rss") else None, fmt_1), "reload")
    return rows


def master_rows(cfg: Config, scenarios: list[Scenario], runs: Runs,
                pmx_servers: list[Server]) -> Rows:
    """The master's own CPU in each scenario, and its largest RSS under `pmx run`."""
    rows: Rows = []
    for scenario in scenarios:
        for n in cfg.workers:
            by_server = runs.get(scenario.name, {}).get(str(n), {})
            cells = [cell(summarize(by_server.get(s.key, []), "master_cpu"), fmt_int)
                     for s in pmx_servers]
            if any(c != "—" for c in cells):
                rows.append([f"master CPU, {scenario.name}, {n} workers (% of one core)",
                             *cells])
    for n in cfg.workers:
        cells = []
        for s in pmx_servers:
            rss = [r["master_rss"] / MIB for per in runs.values()
                   for r in per.get(str(n), {}).get(s.key, []) if r.get("master_rss")]
            cells.append(fmt_1(max(rss)) if rss else "—")
        if any(c != "—" for c in cells):
            rows.append([f"master RSS after load, `pmx run`, {n} workers (largest, MiB)",
                         *cells])
    return rows


def status_rows(status: dict[str, Any]) -> Rows:
    rows = [["`pmx status` wall time, median of 5 (s)", f"{status['median']:.3f}"],
            ["`pmx status` wall times (s)", ", ".join(f"{t:.3f}" for t in status["times"])],
            ["master RSS under the daemon, idle (MiB)", fmt_1(status["master_rss"] / MIB)]]
    if status.get("daemon_rss"):
        rows.append(["daemon RSS (MiB)", fmt_1(status["daemon_rss"] / MIB)])
    rows.append(["worker RSS, idle (MiB)",
                 ", ".join(fmt_1(v / MIB) for v in status["worker_rss"] if v)])
    return rows


def pmx_section(cfg: Config, chosen: list[Server], scenarios: list[Scenario], runs: Runs,
                churn: Churn, status: dict[str, Any] | None, daemon_workers: int) -> list[str]:
    pmx_servers = [s for s in chosen if s.pmx_policy]
    header = ["", *[s.label for s in pmx_servers]]
    rows = daemon_rows(churn, daemon_workers, pmx_servers)
    master = master_rows(cfg, scenarios, runs, pmx_servers)
    if not (rows or master or status):
        return []
    out = ["## pmx only: reload, memory recycling, footprint\n"]
    if rows:
        out += [f"Under the daemon with {daemon_workers} workers, once per repeat for each "
                "policy.\n", table(header, rows), ""]
    if master:
        out += [table(header, master), ""]
    if status:
        out += [f"With the daemon running one idle app ({status['workers']} workers, "
                f"`{status['policy']}`):\n", table(["", ""], status_rows(status)), ""]
    return out
