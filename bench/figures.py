"""The figures read from a measurement record, and how they are summarised over repeats
(median, min, max) and printed."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Summary = tuple[float, float, float]  # median, min, max
Fmt = Callable[[float], str]
Record = dict[str, Any]


def fmt_int(v: float) -> str:
    return f"{v:,.0f}"


def fmt_2(v: float) -> str:
    return f"{v:.2f}"


def fmt_1(v: float) -> str:
    return f"{v:.1f}"


def _ratio(v: float) -> str:
    return "∞" if v == math.inf else f"{v:.2f}"


def _path(*keys: str, scale: float = 1.0) -> Callable[[Record], float | None]:
    def get(record: Record) -> float | None:
        value: Any = record
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return float(value) * scale

    return get


@dataclass(frozen=True)
class Figure:
    key: str
    label: str  # a column header
    get: Callable[[Record], float | None]
    fmt: Fmt
    higher_is_better: bool = False


FIGURES: dict[str, Figure] = {f.key: f for f in [
    Figure("rps", "fast req/s", _path("fast", "rps"), fmt_int, higher_is_better=True),
    *(Figure(p, f"{p} ms, wrk", _path("fast", "latency_us", p, scale=0.001), fmt_2)
      for p in ("p50", "p90", "p99")),
    *(Figure(f"r{p}", f"{p} ms, per request", _path("fast", "raw_latency_us", p, scale=0.001),
             fmt_2)
      for p in ("p50", "p90", "p99")),
    Figure("cpu", "server CPU µs/request", _path("server_cpu_us"), lambda v: f"{v:.0f}"),
    Figure("spread", "requests per worker, max/min", _path("fast", "spread"), _ratio),
    Figure("conn_spread", "connections per worker, max/min", _path("spread"), _ratio),
    Figure("load_rps", "other clients' req/s", _path("load_rps"), fmt_int,
           higher_is_better=True),
    Figure("failed", "failed requests", _path("failed"), fmt_int),
    Figure("other_cores", "CPU used elsewhere (cores)", _path("other_cores"),
           fmt_2),
    Figure("steal_cores", "of which stolen (cores)", _path("steal_cores"), fmt_2),
    Figure("master_cpu", "pmx master CPU (% of a core)", _path("master_cpu", scale=100.0),
           lambda v: f"{v:.0f}"),
]}


def mmm(values: list[float | None]) -> Summary | None:
    present = [v for v in values if v is not None]
    return (statistics.median(present), min(present), max(present)) if present else None


def summarize(records: list[Record], key: str) -> Summary | None:
    figure = FIGURES[key]
    return mmm([figure.get(r) for r in records])


def median(records: list[Record], key: str) -> float | None:
    s = summarize(records, key)
    return s[0] if s else None


def cell(summary: Summary | None, fmt: Fmt) -> str:
    if summary is None:
        return "—"
    m, lo, hi = (fmt(v) for v in summary)
    return m if lo == hi else f"{m} ({lo}–{hi})"


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, when both are finite and base is not 0."""
    if value is None or base is None or base == 0:
        return None
    if not (math.isfinite(value) and math.isfinite(base)):
        return None
    return value / base


def relative_range(summary: Summary | None) -> float:
    """(max - min) / median; 0 when unknown or not finite."""
    if summary is None:
        return 0.0
    m, lo, hi = summary
    if not all(math.isfinite(v) for v in summary) or m == 0:
        return 0.0
    return (hi - lo) / m


def table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A Markdown table; the first ``left`` columns are left-aligned, the rest right."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < left else "--:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
