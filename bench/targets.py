"""The targets pmx is held to, checked against a run's figures.

Scenario targets come from bench/scenarios.py: a figure of pmx's default policy as a
ratio to ``uvicorn --workers`` measured in the same run (or the figure itself). On top,
for every scenario: none of pmx's other policies may beat the default one on the
scenario's headline figures by more than the run's noise, which is the widest min–max
range (relative to its median) of any server in that scenario, and at least
``NOISE_FLOOR``. The daemon targets hold the pmx-only figures to fixed limits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench.figures import FIGURES, Record, median, ratio, relative_range, summarize
from bench.procs import MIB
from bench.scenarios import Scenario, Target
from bench.servers import Server

NOISE_FLOOR = 0.10
BASE = "uvicorn"

Runs = dict[str, dict[str, dict[str, list[Record]]]]  # scenario -> workers -> server key
Churn = dict[str, dict[str, list[dict[str, Any]]]]  # kind -> policy -> records


def verdict(value: float | None, op: str, limit: float, fmt: Callable[[float], str]) -> str:
    if value is None:
        return "not measured"
    ok = value == value and (value >= limit if op == ">=" else
                             value <= limit if op == "<=" else value == limit)
    return f"{fmt(value)}: {'pass' if ok else '**FAIL**'}"


def _times(v: float) -> str:
    return "∞×" if v == math.inf else f"{v:.2f}×"


def _count_or(why: str) -> Callable[[float], str]:
    """A count, or ``why`` in place of NaN (the run did not do what was measured)."""
    return lambda v: why if v != v else f"{v:,.0f}"


def threshold(target: Target) -> str:
    sign = {">=": "≥", "<=": "≤", "==": "="}[target.op]
    if target.relative:
        return f"{sign} {target.limit:.1f}× uvicorn"
    return f"{sign} {target.limit:g}"


def target_value(target: Target, by_server: dict[str, list[Record]],
                 default: Server) -> float | None:
    value = median(by_server.get(default.key, []), target.figure)
    if not target.relative:
        return value
    return ratio(value, median(by_server.get(BASE, []), target.figure))


def beaten_by(scenario: Scenario, by_server: dict[str, list[Record]], default: Server,
              policies: list[Server]) -> list[str]:
    """The other policies' wins over the default beyond the noise, as short phrases."""
    wins = []
    for key in scenario.headline:
        figure = FIGURES[key]
        noise = max([relative_range(summarize(rs, key)) for rs in by_server.values()]
                    + [NOISE_FLOOR])
        mine = median(by_server.get(default.key, []), key)
        for other in policies:
            theirs = median(by_server.get(other.key, []), key)
            if mine is None or theirs is None or theirs == mine:
                continue
            better = theirs > mine if figure.higher_is_better else theirs < mine
            if not better:
                continue
            gain = ratio(theirs, mine)
            margin = abs(gain - 1) if gain else math.inf  # None: one of them is infinite
            if margin > noise:
                by = f"by {margin:.0%}" if gain else "by far"
                wins.append(f"{other.pmx_policy} {figure.label} {figure.fmt(theirs)} vs "
                            f"{figure.fmt(mine)} ({by}, noise {noise:.0%})")
    return wins


def scenario_rows(scenario: Scenario, runs: Runs, workers: list[int], default: Server,
                  policies: list[Server]) -> list[list[str]]:
    """Rows: [family, target, threshold, one cell per worker count]."""
    per = runs.get(scenario.name, {})
    rows = []
    for target in scenario.targets:
        figure = FIGURES[target.figure]
        fmt = _times if target.relative else figure.fmt
        cells = []
        for n in workers:
            if not scenario.runs_at(n):
                cells.append("—")
                continue
            value = target_value(target, per.get(str(n), {}), default)
            cells.append(verdict(value, target.op, target.limit, fmt))
        rows.append([scenario.name, figure.label, threshold(target), *cells])
    if policies:
        cells = []
        for n in workers:
            by_server = per.get(str(n), {})
            if not scenario.runs_at(n) or default.key not in by_server:
                cells.append("—")
                continue
            wins = beaten_by(scenario, by_server, default, policies)
            cells.append("; ".join(wins) + ": **FAIL**" if wins else "none: pass")
        labels = ", ".join(FIGURES[k].label for k in scenario.headline)
        rows.append([scenario.name, f"other policies better on {labels}",
                     "within noise", *cells])
    return rows


def daemon_rows(churn: Churn, status: dict[str, Any] | None, runs: Runs, default: Server,
                daemon_workers: int) -> list[tuple[str, str, str]]:
    """(target, threshold, verdict) of pmx's default policy under its daemon."""
    policy = default.pmx_policy or ""
    rows = []

    def failed(kind: str) -> float | None:
        rs = churn.get(kind, {}).get(policy, [])
        if not rs:
            return None
        if kind == "memory" and not all(r["restarts"] for r in rs):
            return math.nan
        if kind == "reload" and not all(
            r["reload_rc"] == 0 and r["replaced"] == daemon_workers for r in rs
        ):
            return math.nan
        return float(sum(r["failed"] for r in rs))

    for kind, what, why in (("reload", "failed requests through reload", "a reload failed"),
                            ("memory", "failed requests through memory restarts",
                             "no restart happened")):
        rows.append((what, "= 0", verdict(failed(kind), "==", 0, _count_or(why))))
    rss = [r["master_rss"] for per in runs.values() for by in per.values()
           for r in by.get(default.key, []) if r.get("master_rss")]
    rss += [r["master_rss"] for r in churn.get("reload", {}).get(policy, [])
            if r.get("master_rss")]
    if status:
        rss.append(status["master_rss"])
    rows.append(("master RSS (largest seen)", "≤ 40 MiB",
                 verdict(max(rss) / MIB if rss else None, "<=", 40.0,
                         lambda v: f"{v:.1f} MiB")))
    rows.append(("`pmx status` wall time", "≤ 0.3 s",
                 verdict(status["median"] if status else None, "<=", 0.3,
                         lambda v: f"{v:.3f} s")))
    return rows


def missed(rows: list[list[str]]) -> list[str]:
    """Every target row with a failing cell, as one line each."""
    return [f"{r[0]}: {r[1]} {r[2]} ({'; '.join(c for c in r[3:] if 'FAIL' in c)})"
            for r in rows if any("FAIL" in c for c in r[3:])]
