"""Benchmark pmx against uvicorn --workers, gunicorn + UvicornWorker and granian.

Run from the repository root (``make bench`` does it all on a fresh machine):

    .venv/bin/python bench/run.py              # full run: every family, 3 repeats
    .venv/bin/python bench/run.py --quick      # under 10 minutes, rough figures
    .venv/bin/python bench/run.py --only tail --workers 2 --servers pmx,uvicorn --duration 2
    .venv/bin/python bench/run.py --help

The workload families are data (bench/scenarios.py); the harness around them: processes
(procs.py), the servers compared (servers.py), load generators (load.py), one
measurement (measure.py), the matrix of scenarios x worker counts x servers
(matrix.py), pmx under its daemon (pmxd.py), kept-alive connections through scale-up
and reload with rebalancing on and off (rebalance.py), and the report (report.py, with
figures.py, targets.py, pmxreport.py, method.py, machine.py). To tell whether a change
moved a figure, bench/ab.py runs it against pmx at other revisions, in alternating runs.

The report (Markdown) goes to stdout and to docs/benchmarks.md (``--output``); the raw
figures and every server's log go to bench/results/TIMESTAMP/.

Needs: Python 3.10+, psutil, wrk on PATH; pmx and uvicorn installed in this interpreter;
gunicorn + uvicorn-worker and granian are measured when importable.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import DAEMON_SCENARIOS, Config  # noqa: E402
from bench.machine import machine, pmx_version  # noqa: E402
from bench.matrix import measure_matrix  # noqa: E402
from bench.pmxd import run_daemon_scenarios  # noqa: E402
from bench.procs import BENCH, ROOT, BenchError, cleanup, install_handlers, log  # noqa: E402
from bench.rebalance import run_rebalance  # noqa: E402
from bench.report import Results, report  # noqa: E402
from bench.scenarios import FAMILIES, by_name, select  # noqa: E402
from bench.servers import Server, servers  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark pmx against uvicorn --workers, gunicorn + UvicornWorker and "
                    "granian on 127.0.0.1 (see docs/benchmarks.md).",
    )
    parser.add_argument("--workers", default="2,4",
                        help="comma-separated worker counts (default 2,4); every family runs at "
                             "any count (blockers-n-1 from 3 on): 2,4,16 adds more workers "
                             "than cores")
    parser.add_argument("--duration", type=int, default=None,
                        help="seconds per measurement (default: each scenario's own, 10 or "
                             "15; 2 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="2 s measurements, 1 repeat, 1 s warm-up, no waiting for a "
                             "quiet machine, one memory restart: under 10 minutes in all")
    parser.add_argument("--repeats", type=int, default=None,
                        help="repeats of every scenario; medians are reported (default 3; "
                             "1 with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--servers", default="pmx,uvicorn,gunicorn,granian",
                        help="comma-separated: pmx (every --balance policy), pmx-POLICY "
                             "(pmx-round-robin, ...), uvicorn, gunicorn, granian (default: "
                             "all of them that are installed)")
    parser.add_argument("--only", default="",
                        help="comma-separated families or scenarios to run (families: "
                             + ", ".join(FAMILIES) + "; pmx only: "
                             + ", ".join(DAEMON_SCENARIOS) + "); default: all")
    parser.add_argument("--max-memory", default="64M",
                        help="pmx --max-memory for the memory scenario (default 64M)")
    parser.add_argument("--leak-rate", type=float, default=40.0,
                        help="/leak requests per second in the memory scenario (default 40)")
    parser.add_argument("--mem-restarts", type=int, default=None,
                        help="memory restarts to wait for (default 4; 1 with --quick)")
    parser.add_argument("--busy-cores", type=float, default=0.3,
                        help="a measurement during which other processes used more CPU than "
                             "this (in cores) is taken again (default 0.3)")
    parser.add_argument("--retries", type=int, default=None,
                        help="how often such a measurement is taken again; the quietest "
                             "attempt is kept (default 2; 0 with --quick)")
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="before each measurement, wait up to this many seconds for the "
                             "machine to be quiet (default 60; 0, no wait, with --quick)")
    parser.add_argument("--from-results", metavar="DIR",
                        help="measure nothing: write the report of an earlier run from its "
                             "results directory (bench/results/DATE-TIME)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"),
                        help="Markdown report file ('-': stdout only; default docs/benchmarks.md)")
    parser.add_argument("--results-dir", default=str(BENCH / "results"),
                        help="where raw results and server logs go (default bench/results)")
    return parser.parse_args(argv)


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def make_config(args: argparse.Namespace) -> Config:
    quick = args.quick
    only = _split(args.only)
    daemon = [k for k in DAEMON_SCENARIOS if not only or k in only]
    return Config(
        workers=sorted({int(n) for n in _split(args.workers)}),
        duration=args.duration or (2 if quick else None),
        repeats=max(1, args.repeats or (1 if quick else 3)),
        threads=max(1, args.threads),
        warmup=1 if quick else 2,
        quick=quick,
        only=only,
        daemon=daemon,
        max_memory=args.max_memory,
        leak_rate=args.leak_rate,
        mem_restarts=args.mem_restarts or (1 if quick else 4),
        mem_timeout=30 if quick else 40,
        busy_cores=args.busy_cores,
        retries=max(0, args.retries if args.retries is not None else (0 if quick else 2)),
        quiet_wait=max(0.0, args.quiet_wait if args.quiet_wait is not None
                       else (0.0 if quick else 60.0)),
    )


def choose_servers(spec: str) -> tuple[list[Server], list[Server]]:
    """(servers to measure, servers asked for but not installed)."""
    known = {s.key: s for s in servers()}
    wanted = []
    for key in _split(spec):
        wanted += [k for k in known if k.startswith("pmx-")] if key == "pmx" else [key]
    bad = [k for k in wanted if k not in known]
    if bad:
        raise ValueError(f"unknown server(s): {', '.join(bad)} "
                         f"(choose from pmx, {', '.join(known)})")
    chosen = [known[k] for k in known if k in wanted and known[k].available]
    skipped = [known[k] for k in known if k in wanted and not known[k].available]
    return chosen, skipped


def write_report(text: str, output: str) -> None:
    print(text)
    if output != "-":
        Path(output).write_text(text + "\n")
        log(f"wrote {output}")


def _server_json(s: Server) -> dict[str, Any]:
    return {"key": s.key, "label": s.label, "policy": s.pmx_policy, "default": s.default,
            "missing": s.missing}


def _server_from_json(d: dict[str, Any]) -> Server:
    return Server(d["key"], d["label"], lambda port, workers, app: [], pmx_policy=d["policy"],
                  default=d["default"], available=not d["missing"], missing=d["missing"])


def rerender(args: argparse.Namespace) -> int:
    """The report of an earlier run, from its results.json."""
    path = Path(args.from_results)
    raw = json.loads((path / "results.json" if path.is_dir() else path).read_text())
    if "servers" not in raw:
        print(f"{path}: results from an older harness; rerun the benchmark", file=sys.stderr)
        return 1
    scenarios = by_name()
    res = Results(
        cfg=Config.from_json(raw["config"]),
        chosen=[_server_from_json(d) for d in raw["servers"]],
        skipped=[_server_from_json(d) for d in raw["skipped"]],
        scenarios=[scenarios[n] for n in raw["scenarios"] if n in scenarios],
        runs=raw["runs"], churn=raw["churn"], status=raw["status"],
        daemon_workers=raw["daemon_workers"], info=raw["machine"], argv=raw["argv"],
        seconds=raw.get("seconds", 0.0), rebalance=raw.get("rebalance", {}),
    )
    write_report(report(res), args.output)
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_results:
        return rerender(args)
    cfg = make_config(args)
    try:
        families = [n for n in cfg.only if n not in DAEMON_SCENARIOS]
        # --only naming pmx-daemon scenarios alone runs no family.
        scenarios = select(families, cfg.workers) if families or not cfg.only else []
        if shutil.which("wrk") is None:
            raise BenchError("wrk is not on PATH (Debian: apt-get install wrk)")
        chosen, skipped = choose_servers(args.servers)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for s in skipped:
        log(f"skipping {s.label}: {s.missing}")
    atexit.register(cleanup)
    install_handlers()
    results = Path(args.results_dir) / time.strftime("%Y%m%d-%H%M%S")
    results.mkdir(parents=True, exist_ok=True)
    log(f"results and logs in {results}")
    t0 = time.monotonic()
    res = Results(cfg, chosen, skipped, scenarios, runs={}, info=machine(),
                  argv=["bench/run.py", *argv], daemon_workers=min(cfg.workers))
    policies = [s.pmx_policy for s in chosen if s.pmx_policy]
    default = policies[0] if policies else ""  # servers() lists the default policy first
    try:
        res.runs = measure_matrix(cfg, chosen, scenarios, results)
        res.churn, res.status = run_daemon_scenarios(cfg, res.daemon_workers, policies,
                                                     default, results)
        if policies and (not cfg.only or "rebalance" in cfg.only):
            res.rebalance = run_rebalance(cfg, results)
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        cleanup()
        res.seconds = time.monotonic() - t0
        at_end = pmx_version()
        if at_end != res.info["pmx"]:  # someone changed pmx while this ran
            res.info["pmx at the end of the run"] = at_end
        raw = {
            "argv": res.argv, "machine": res.info, "config": cfg.to_json(),
            "servers": [_server_json(s) for s in chosen],
            "skipped": [_server_json(s) for s in skipped],
            "scenarios": [s.name for s in scenarios], "runs": res.runs, "churn": res.churn,
            "status": res.status, "daemon_workers": res.daemon_workers,
            "rebalance": res.rebalance, "seconds": res.seconds,
        }
        (results / "results.json").write_text(json.dumps(raw, indent=1, default=str))
    log(f"done in {res.seconds / 60:.1f} min")
    write_report(report(res), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
