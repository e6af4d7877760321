"""The ``pmx status`` table, built from a status snapshot (the dicts ``pmx status --json`` prints).

Everything here is pure: formatters turn raw values into short strings, ``status_rows``
turns a snapshot into one row of strings per worker, ``fit_columns`` picks the columns
that fit a terminal width, and ``render_table`` lays the table out as plain text.

Layout rules: columns are separated by two spaces and are as wide as their widest cell
or header; numbers are right-aligned, text left-aligned. When the terminal is narrow,
whole columns are dropped (highest priority number first) rather than wrapping or
truncating rows; the four identifying columns are always shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.cells import cell_len

# (column id, header, priority). Priority 0 is never dropped; otherwise the highest
# number is dropped first when the table is too wide.
COLUMNS: list[tuple[str, str, int]] = [
    ("app", "app", 0),
    ("id", "id", 0),
    ("pid", "pid", 0),
    ("state", "state", 0),
    ("uptime", "uptime", 3),
    ("restarts", "restarts", 5),
    ("cpu", "cpu", 2),
    ("mem", "mem", 1),
    ("conns", "conns", 4),
    ("reqs", "reqs", 7),
    ("moved", "moved", 8),
    ("health", "health", 6),
]

RIGHT_ALIGNED = frozenset({"id", "pid", "restarts", "cpu", "mem", "conns", "reqs", "moved",
                           "uptime"})
SEPARATOR = "  "
MISSING = "-"
EMPTY_MESSAGE = "No apps running. Start one with: pmx start module:app"

_HEADERS = {cid: header for cid, header, _ in COLUMNS}
_BYTE_UNITS = ("K", "M", "G", "T", "P")


def format_uptime(seconds: float | None) -> str:
    """``45s``, ``12m``, ``3h``, ``2d``: the largest whole unit, rounded down."""
    if seconds is None or not math.isfinite(seconds):
        return MISSING
    secs = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def format_bytes(n: int | None) -> str:
    """``512B``, ``1.5K``, ``52.4M``, ``312M``, ``1.2G`` (base 1024; one decimal below 100)."""
    if n is None:
        return MISSING
    n = max(0, int(n))
    if n < 1024:
        return f"{n}B"
    value = float(n)
    for i, unit in enumerate(_BYTE_UNITS):
        value /= 1024
        # Move up a unit when the number would print as 1024 or more (e.g. 1023.9K),
        # unless there is no bigger unit.
        if round(value) < 1024 or i == len(_BYTE_UNITS) - 1:
            return _one_decimal_below_100(value) + unit
    raise AssertionError("unreachable")


def format_cpu(p: float | None) -> str:
    """``1.5%`` (one decimal), ``100%`` and above without a decimal."""
    if p is None or not math.isfinite(p):
        return MISSING
    return _one_decimal_below_100(max(0.0, p)) + "%"


def _one_decimal_below_100(value: float) -> str:
    text = f"{value:.1f}"
    if float(text) >= 100:  # also catches 99.96, which would print as "100.0"
        text = f"{value:.0f}"
    return text


def _text(value: Any) -> str:
    return MISSING if value is None or value == "" else str(value)


def status_rows(snapshot: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row (column id -> cell text) per worker, grouped by app.

    The app name appears only on the first row of its group. An app without workers
    (errored or stopped) gets a single row carrying its name and state.
    """
    return [row for _app, _worker, row in worker_rows(snapshot)]


def worker_rows(
    snapshot: Mapping[str, Any],
) -> list[tuple[str, Mapping[str, Any] | None, dict[str, str]]]:
    """``status_rows`` with, for each row, its app's name and its worker (None for an
    app without workers): the rows ``pmx status`` and ``pmx monit`` share."""
    rows: list[tuple[str, Mapping[str, Any] | None, dict[str, str]]] = []
    for app in snapshot.get("apps") or []:
        name = str(app.get("name", ""))
        workers = app.get("workers") or []
        if not workers:
            row = {cid: MISSING for cid, _, _ in COLUMNS}
            row["app"] = name
            row["state"] = _text(app.get("state"))
            rows.append((name, None, row))
            continue
        for index, worker in enumerate(workers):
            rows.append((name, worker, {
                "app": name if index == 0 else "",
                "id": _text(worker.get("id")),
                "pid": _text(worker.get("pid")),
                "state": _text(worker.get("state")),
                "uptime": format_uptime(worker.get("uptime")),
                "restarts": _text(worker.get("restarts")),
                "cpu": format_cpu(worker.get("cpu")),
                "mem": format_bytes(worker.get("memory")),
                "conns": _text(worker.get("connections")),
                "reqs": _text(worker.get("requests")),
                "moved": _text(worker.get("moved")),
                "health": _text(worker.get("health")),
            }))
    return rows


def _column_widths(rows: Sequence[Mapping[str, str]]) -> dict[str, int]:
    return {
        cid: max([cell_len(header)] + [cell_len(row.get(cid, "")) for row in rows])
        for cid, header, _ in COLUMNS
    }


def _table_width(columns: Sequence[str], widths: Mapping[str, int]) -> int:
    return sum(widths[cid] for cid in columns) + len(SEPARATOR) * max(0, len(columns) - 1)


def fit_columns(rows: Sequence[Mapping[str, str]], width: int) -> list[str]:
    """The column ids (in table order) to show so the table fits in ``width`` cells.

    Droppable columns go highest priority first until the table fits; the mandatory
    (priority 0) columns stay even if they alone are wider than ``width``.
    """
    widths = _column_widths(rows)
    shown = [cid for cid, _, _ in COLUMNS]
    droppable = sorted((c for c in COLUMNS if c[2] > 0), key=lambda c: c[2], reverse=True)
    for cid, _, _ in droppable:
        if _table_width(shown, widths) <= width:
            break
        shown.remove(cid)
    return shown


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * max(0, width - cell_len(text))
    return fill + text if right else text + fill


def render_table(snapshot: Mapping[str, Any], width: int) -> str:
    """The status table as plain text: a header line, then one line per row."""
    rows = status_rows(snapshot)
    if not rows:
        return EMPTY_MESSAGE
    columns = fit_columns(rows, width)
    widths = _column_widths(rows)
    lines = []
    for cells in [_HEADERS, *rows]:
        line = SEPARATOR.join(
            _pad(cells.get(cid, ""), widths[cid], cid in RIGHT_ALIGNED) for cid in columns
        )
        lines.append(line.rstrip())
    return "\n".join(lines)
