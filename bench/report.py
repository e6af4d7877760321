"""The Markdown report of a run: targets, one table per family, pmx-only figures, the
machine, and how it was measured (bench/method.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.config import Config
from bench.figures import FIGURES, Record, cell, median, ratio, summarize, table
from bench.method import method
from bench.pmxreport import pmx_section
from bench.rebalance import rebalance_section
from bench.scenarios import FAMILIES, Scenario
from bench.servers import Server
from bench.targets import BASE, Churn, Runs, daemon_rows, scenario_rows


@dataclass
class Results:
    cfg: Config
    chosen: list[Server]
    skipped: list[Server]
    scenarios: list[Scenario]
    runs: Runs
    churn: Churn = field(default_factory=dict)
    status: dict[str, Any] | None = None
    daemon_workers: int = 0
    info: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the run
    rebalance: dict[str, Any] = field(default_factory=dict)  # bench/rebalance.py

    @property
    def default(self) -> Server | None:
        return next((s for s in self.chosen if s.default), None)

    @property
    def policies(self) -> list[Server]:
        """pmx's policies other than the default."""
        return [s for s in self.chosen if s.pmx_policy and not s.default]


def _workers(res: Results, scenario: Scenario) -> list[int]:
    return [n for n in res.cfg.workers if scenario.runs_at(n)]


def _clients(scenario: Scenario, workers: int) -> str:
    if scenario.kind == "connections":
        return f"{scenario.connections} keep-alive connections opened at once"
    parts = [c.describe(workers) + (" (measured)" if c.fast else "") for c in scenario.clients]
    return ", ".join(parts)


def family_table(res: Results, scenarios: list[Scenario]) -> str:
    keys = list(dict.fromkeys(k for s in scenarios for k in s.figures))
    figures = [FIGURES[k] for k in keys]
    rows = []
    for scenario in scenarios:
        for n in _workers(res, scenario):
            by_server = res.runs.get(scenario.name, {}).get(str(n), {})
            setup = f"{n} workers" if len(scenarios) == 1 else f"{scenario.name}, {n} workers"
            for server in res.chosen:
                records = by_server.get(server.key, [])
                if records:
                    rows.append([setup, server.label,
                                 *[cell(summarize(records, f.key), f.fmt) for f in figures]])
            default = res.default
            if default and by_server.get(default.key) and by_server.get(BASE):
                cells = []
                for f in figures:
                    v = ratio(median(by_server[default.key], f.key),
                              median(by_server[BASE], f.key))
                    cells.append(f"{v:.2f}×" if v is not None else "—")
                rows.append([setup, "**pmx ÷ uvicorn**", *cells])
    return table(["setup", "server", *[f.label for f in figures]], rows, left=2)


def _failures(res: Results, scenarios: list[Scenario]) -> list[str]:
    notes = []
    labels = {s.key: s.label for s in res.chosen}
    for scenario in scenarios:
        for n, by_server in res.runs.get(scenario.name, {}).items():
            for key, records in by_server.items():
                failed = sum(int(r.get("failed", 0)) for r in records)
                if failed:
                    notes.append(f"{labels.get(key, key)} in {scenario.name} at {n} workers: "
                                 f"{failed:,}")
    return notes


def families_section(res: Results) -> list[str]:
    out = ["## Results by family\n",
           f"Median of {res.cfg.repeats} repeat(s), with the min–max range in brackets when "
           "they differ. *pmx* is pmx with its default policy "
           f"(`{res.default.pmx_policy if res.default else '?'}`); the row *pmx ÷ uvicorn* "
           "divides its medians by those of `uvicorn --workers` (above 1 is better for "
           "req/s, below 1 for latency, CPU and spread). Latency and req/s are those of the "
           "clients marked *measured*.\n"]
    number = 0
    for family, title in FAMILIES.items():
        scenarios = [s for s in res.scenarios if s.family == family]
        if not scenarios:
            continue
        number += 1
        out.append(f"### {number}. {title} (`{family}`)\n")
        for s in scenarios:
            per = {n: _clients(s, n) for n in _workers(res, s)}
            if len(set(per.values())) == 1:
                clients = next(iter(per.values()))
            else:
                clients = "; ".join(f"at {n} workers, {text}" for n, text in per.items())
            out.append(f"`{s.name}`: {s.about}. Clients: {clients}.\n")
        out.append(family_table(res, scenarios))
        out.append("")
        failures = _failures(res, scenarios)
        if failures:
            out.append("Failed requests (non-2xx or socket errors, all clients): "
                       + "; ".join(failures) + ".\n")
    return out


def targets_section(res: Results) -> list[str]:
    default = res.default
    out = ["## Targets\n"]
    if default is None:
        return [*out, "pmx's default policy was not measured.\n"]
    workers = res.cfg.workers
    rows: list[list[str]] = []
    for scenario in res.scenarios:
        rows += scenario_rows(scenario, res.runs, workers, default, res.policies)
    out.append(f"pmx (`{default.pmx_policy}`, its default policy); ratios are to "
               "`uvicorn --workers` measured in the same run, medians over the repeats. The "
               "last row of each family: whether another pmx policy beats the default on "
               "the family's headline figures by more than the run's noise (the widest "
               "relative min–max range of any server there, at least 10%).\n")
    out.append(table(["family", "figure", "threshold", *[f"{n} workers" for n in workers]],
                     rows, left=3))
    out.append("")
    daemon = daemon_rows(res.churn, res.status, res.runs, default, res.daemon_workers)
    measured = [r for r in daemon if r[2] != "not measured"]
    if measured:
        out.append(f"pmx under its daemon ({res.daemon_workers} workers) and its footprint:\n")
        out.append(table(["target", "threshold", "pmx"], [list(r) for r in measured]))
        out.append("")
    missed = [f"- {r[0]}, {r[1]} {r[2]}: "
              + "; ".join(f"{n} workers {c.replace(': **FAIL**', '')}"
                          for n, c in zip(workers, r[3:], strict=True) if "FAIL" in c)
              for r in rows if any("FAIL" in c for c in r[3:])]
    missed += [f"- {r[0]} {r[1]}: {r[2].replace(': **FAIL**', '')}"
               for r in measured if "FAIL" in r[2]]
    out.append("**Missed**:\n\n" + "\n".join(missed) + "\n" if missed
               else "Every target measured was met.\n")
    return out


def interference_section(res: Results) -> list[str]:
    rows = []
    for scenario in res.scenarios:
        if scenario.kind == "connections":
            continue  # a burst is too short to tell
        cells = []
        for n in res.cfg.workers:
            records: list[Record] = [r for rs in res.runs.get(scenario.name, {})
                                     .get(str(n), {}).values() for r in rs]
            if not records:
                cells.append("—")
                continue
            worst = max(records, key=lambda r: r.get("other_cores", 0.0))
            cells.append(f"{worst.get('other_cores', 0):.2f} / {worst.get('steal_cores', 0):.2f}")
        rows.append([scenario.name, *cells])
    return ["## CPU used outside the benchmark\n",
            "Per scenario, the measurement (any server, any repeat) during which other "
            "processes used the most CPU: cores used elsewhere / of which stolen by the "
            "hypervisor (the connection bursts of `spread` are too short to tell).\n",
            table(["scenario", *[f"{n} workers" for n in res.cfg.workers]], rows), ""]


def report(res: Results) -> str:
    cfg = res.cfg
    out: list[str] = ["# Benchmarks\n"]
    out.append("pmx against `uvicorn --workers`, gunicorn with `uvicorn_worker.UvicornWorker` "
               "and granian, all serving the same plain apps ([bench/app.py](../bench/app.py), "
               "[bench/wsgi_app.py](../bench/wsgi_app.py)) on 127.0.0.1 with "
               + _and([str(n) for n in cfg.workers]) + " workers, loaded by wrk from "
               "the same machine, in a matrix of workload families declared in "
               "[bench/scenarios.py](../bench/scenarios.py). The figures are from one run on "
               "the machine described; they say how the servers compare there, not what any "
               "of them does on other hardware.\n")
    if cfg.quick:
        out.append(f"**This is a `--quick` run** ({cfg.duration} s per measurement, "
                   f"{cfg.repeats} repeat): its figures are rough, and ranges and noise are "
                   "not estimated.\n")
    out += ["## Rerun\n",
            "```sh\n"
            "make bench                              # installs wrk and the servers, full run\n"
            "make bench BENCH_ARGS=--quick           # under 10 minutes, rough figures\n"
            "make bench BENCH_ARGS=\"--workers 2,4,16\"  # and more workers than cores\n"
            ".venv/bin/python bench/run.py --only tail,spread --workers 2 --servers pmx,uvicorn\n"
            ".venv/bin/python bench/run.py --help    # durations, repeats, subsets, ...\n"
            ".venv/bin/python bench/ab.py HEAD~1 HEAD --only tail  # pmx against itself\n"
            "```\n",
            "A run replaces this file (`--output FILE` writes elsewhere, `--output -` only "
            "prints) and keeps the raw figures (`results.json`) and every server's log in "
            "`bench/results/DATE-TIME/`, which git ignores; `--from-results DIR` writes the "
            "report of such a run again. `bench/ab.py` measures a change: pmx at two "
            "revisions or more (git revisions or directories), each running its own "
            "harness once a round with one repeat, the order rotating from round to round; "
            "it prints each figure's median and values, and the share of pairs of runs "
            "each later revision wins.\n"]
    out += targets_section(res)
    out += families_section(res)
    out += pmx_section(res.cfg, res.chosen, res.scenarios, res.runs, res.churn, res.status,
                       res.daemon_workers)
    out += rebalance_section(res.rebalance)
    out += interference_section(res)
    out += ["## Machine and versions\n", table(["", ""], [[k, v] for k, v in res.info.items()]),
            ""]
    out += method(res.cfg, res.skipped, res.argv, res.seconds, res.daemon_workers)
    return "\n".join(out)


def _and(words: list[str]) -> str:
    """"2", "2 and 4", "2, 4 and 16"."""
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)
