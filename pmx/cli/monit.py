"""``pmx monit``: the status table, live, with requests per second per worker."""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from pmx.cli.table import MISSING, worker_rows

# The status table's columns that monit shows, then its own: requests per second.
COLUMNS = ("app", "id", "pid", "state", "uptime", "cpu", "mem", "conns")


def rates(before: dict[str, Any] | None, after: dict[str, Any], seconds: float) -> dict:
    """Requests per second per (app, worker pid) between two snapshots."""
    if before is None or seconds <= 0:
        return {}
    old = {
        (a["name"], w["pid"]): w.get("requests") or 0
        for a in before["apps"] for w in a["workers"]
    }
    return {
        (a["name"], w["pid"]): max(0.0, ((w.get("requests") or 0) - old[(a["name"], w["pid"])])
                                   / seconds)
        for a in after["apps"] for w in a["workers"]
        if (a["name"], w["pid"]) in old
    }


def build(snapshot: dict[str, Any], rps: dict) -> Table:
    table = Table(title="pmx monit  (q to quit)", expand=False)
    for header in (*COLUMNS, "req/s"):
        table.add_column(header, justify="right" if header not in ("app", "state") else "left")
    for name, worker, row in worker_rows(snapshot):
        rate = rps.get((name, worker["pid"])) if worker is not None else None
        table.add_row(*(row[c] for c in COLUMNS),
                      MISSING if rate is None else f"{rate:.1f}")
    return table


def run_monit(fetch: Callable[[], dict[str, Any]], interval: float = 1.0) -> None:
    interactive = sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin) if interactive else None
    if interactive:
        tty.setcbreak(sys.stdin.fileno())
    previous, previous_at = None, time.monotonic()
    try:
        with Live(console=Console(), auto_refresh=False) as live:
            while True:
                snapshot, now = fetch(), time.monotonic()
                live.update(build(snapshot, rates(previous, snapshot, now - previous_at)),
                            refresh=True)
                previous, previous_at = snapshot, now
                if interactive:
                    ready, _, _ = select.select([sys.stdin], [], [], interval)
                    if ready and os.read(sys.stdin.fileno(), 1) in (b"q", b"Q"):
                        return
                else:
                    time.sleep(interval)
    except KeyboardInterrupt:
        return
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
