"""Compare pmx at two or more revisions on chosen scenarios, in alternating runs.

    .venv/bin/python bench/ab.py HEAD~1 HEAD --only tail,awaiting --rounds 6
    .venv/bin/python bench/ab.py main /path/to/worktree --servers pmx-auto,pmx-round-robin

A change to the balancing or the worker moves figures by a few percent; one run of the
full benchmark moves them by ten to twenty (a shared machine's drift, the scheduler's
placement). So each revision (a git revision, checked out in a temporary worktree, or
a directory holding one) runs ``bench/run.py`` once per round with one repeat, and the
rounds alternate: round *i* runs the revisions in an order rotated by *i*, since runs
made back to back in a fixed order differ by their place in it (measured: with the
two revisions run in a fixed order, the first had a tail p99 per request of 10.2 ms
against 14.0 for the second over six rounds; with the order rotating, 12.6 against
12.5 over nine). Each revision runs its own harness from its own tree, so the servers import
that tree's pmx (the harness starts them with its tree as the working directory, first
on ``sys.path``).

The summary gives, per scenario, worker count, server and figure, each revision's
median with every value, and for each later revision the share of the pairs (one run
of the first revision, one of this) it wins: about 50% is no difference; with six
rounds each, 81% or more (or 19% or less) would happen by chance less than one time
in twenty (a one-sided rank-sum test).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The figures compared: (name, how to read it from one measurement, higher is better).
FIGURES: list[tuple[str, Callable[[dict[str, Any]], float], bool]] = [
    ("fast req/s", lambda m: m["fast"]["rps"], True),
    ("server CPU µs/request", lambda m: m["server_cpu_us"], False),
    ("p90 ms, per request", lambda m: m["fast"]["raw_latency_us"]["p90"] / 1000, False),
    ("p99 ms, per request", lambda m: m["fast"]["raw_latency_us"]["p99"] / 1000, False),
    ("p99 ms, wrk", lambda m: m["fast"]["latency_us"]["p99"] / 1000, False),
]


def order(revisions: Sequence[str], round_number: int) -> list[str]:
    """The revisions in the order round ``round_number`` (from 0) runs them."""
    shift = round_number % len(revisions)
    return [*revisions[shift:], *revisions[:shift]]


def wins(first: Sequence[float], other: Sequence[float], higher_is_better: bool) -> float:
    """The share of pairs (a value of ``first``, one of ``other``) in which ``other`` is
    better; a tie counts half (the Mann-Whitney U statistic, over the pair count)."""
    if not first or not other:
        return float("nan")
    score = 0.0
    for a in first:
        for b in other:
            if a == b:
                score += 0.5
            elif (b > a) == higher_is_better:
                score += 1
    return score / (len(first) * len(other))


def summary(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown rows comparing the revisions' ``results.json`` ``runs`` (one per round)."""
    revisions = list(runs)
    head = "| scenario | workers | server | figure | " + " | ".join(
        [f"{revisions[0]}", *(f"{r} (wins)" for r in revisions[1:])]) + " |"
    rows = [head, "|" + "---|" * 4 + "--:|" * len(revisions)]
    first = runs[revisions[0]]
    if not first:
        return rows
    for scenario, by_workers in first[0].items():
        for workers, by_server in by_workers.items():
            for server in by_server:
                for name, read, higher in FIGURES:
                    values = {r: _values(runs[r], scenario, workers, server, read)
                              for r in revisions}
                    if not values[revisions[0]]:
                        continue
                    cells = [_cell(values[revisions[0]])]
                    for r in revisions[1:]:
                        share = wins(values[revisions[0]], values[r], higher)
                        cells.append(f"{_cell(values[r])} ({share:.0%})")
                    rows.append(f"| {scenario} | {workers} | {server} | {name} | "
                                + " | ".join(cells) + " |")
    return rows


def _values(rounds: list[dict[str, Any]], scenario: str, workers: str, server: str,
            read: Callable[[dict[str, Any]], float]) -> list[float]:
    out = []
    for run in rounds:
        for measurement in run.get(scenario, {}).get(workers, {}).get(server, []):
            try:
                out.append(float(read(measurement)))
            except (KeyError, TypeError, ValueError):
                pass  # a figure this scenario does not have
    return out


def _cell(values: list[float]) -> str:
    listed = " ".join(f"{v:.4g}" for v in sorted(values))
    return f"{statistics.median(values):.4g} [{listed}]" if values else "-"


def checkout(revision: str, where: Path) -> Path:
    """A tree of ``revision``: the directory itself, or a detached worktree of it."""
    if Path(revision).is_dir():
        return Path(revision).resolve()
    tree = where / revision.replace("/", "_").replace("~", "-").replace("^", "-")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree),
                    revision], check=True, capture_output=True, text=True)
    return tree


def run_once(tree: Path, bench_args: list[str], results: Path) -> dict[str, Any]:
    """One run of ``tree``'s own harness with one repeat; its ``runs`` figures."""
    argv = [sys.executable, str(tree / "bench" / "run.py"), *bench_args, "--repeats", "1",
            "--quiet-wait", "0", "--output", "-", "--results-dir", str(results)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(argv, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    found = sorted(results.glob("*/results.json"))
    if not found:
        raise SystemExit(f"bench/ab.py: {tree} wrote no results.json in {results}")
    return json.loads(found[-1].read_text())["runs"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/ab.py",
        description="Compare pmx at two or more revisions (git revisions or directories) "
                    "on chosen scenarios, in alternating runs of bench/run.py.")
    parser.add_argument("revisions", nargs="+", metavar="REVISION")
    parser.add_argument("--only", default="keepalive,newconn",
                        help="families or scenarios, as bench/run.py --only "
                             "(default keepalive,newconn)")
    parser.add_argument("--servers", default="pmx-auto",
                        help="as bench/run.py --servers (default pmx-auto: the default "
                             "policy, whatever it is called in each revision)")
    parser.add_argument("--workers", default="2", help="worker counts (default 2)")
    parser.add_argument("--duration", type=int, default=5,
                        help="seconds per measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="runs of each revision (default 6)")
    args = parser.parse_args(argv)
    if len(args.revisions) < 2:
        parser.error(f"needs two revisions or more to compare, got {args.revisions!r}")
    if len(set(args.revisions)) < len(args.revisions):
        parser.error(f"each revision once, got {args.revisions!r}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    bench_args = ["--only", args.only, "--servers", args.servers, "--workers", args.workers,
                  "--duration", str(args.duration)]
    work = Path(tempfile.mkdtemp(prefix="pmx-ab-"))
    trees: dict[str, Path] = {}
    try:
        for revision in args.revisions:
            trees[revision] = checkout(revision, work)
        runs: dict[str, list[dict[str, Any]]] = {r: [] for r in args.revisions}
        for number in range(args.rounds):
            for revision in order(args.revisions, number):
                print(f"round {number + 1}/{args.rounds}: {revision}", file=sys.stderr)
                results = work / "results" / f"{number}-{args.revisions.index(revision)}"
                runs[revision].append(run_once(trees[revision], bench_args, results))
        print("\n".join(summary(runs)))
        return 0
    finally:
        for tree in trees.values():
            if tree.is_relative_to(work):
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(tree)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
