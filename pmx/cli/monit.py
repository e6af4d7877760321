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

from pmx.cli.table import format_bytes, format_cpu, format_uptime


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
    for header in ("app", "id", "pid", "state", "uptime", "cpu", "mem", "conns", "req/s"):
        table.add_column(header, justify="right" if header not in ("app", "state") else "left")
    for app in snapshot["apps"]:
        if not app["workers"]:
            table.add_row(app["name"], "-", "-", app["state"], "-", "-", "-", "-", "-")
        for index, w in enumerate(app["workers"]):
            rate = rps.get((app["name"], w["pid"]))
            table.add_row(
                app["name"] if index == 0 else "", str(w["id"]), str(w["pid"]), w["state"],
                format_uptime(w["uptime"]), format_cpu(w["cpu"]), format_bytes(w["memory"]),
                str(w["connections"]), "-" if rate is None else f"{rate:.1f}",
            )
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
