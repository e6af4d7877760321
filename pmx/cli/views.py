"""Verbs that show what runs: status (ls, list), describe, monit, logs, startup."""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import click

from pmx.cli.apps import call, print_status
from pmx.cli.table import format_bytes, format_uptime
from pmx.config import check_name
from pmx.daemon import client
from pmx.daemon.paths import Home
from pmx.errors import ConfigError


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the documented JSON schema.")
def status(as_json: bool) -> None:
    """One row per worker, grouped by app."""
    home = Home.from_env()
    try:
        snapshot = client.request(home, "status")
    except client.DaemonNotRunning:
        snapshot = {"version": 1, "apps": []}
    print_status(snapshot, as_json)


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def describe(name: str, as_json: bool) -> None:
    """Everything about one app: config, bind, logs, restart history, last error."""
    info = call("describe", {"name": name})
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    out = [
        f"name       {info['name']}",
        f"app        {info['app']}",
        f"state      {info['state']}",
        f"bind       {info['bind']}",
        f"balance    {info.get('balancing') or info['balance']}",
        f"workers    {len(info['workers'])} running, {info['workers_wanted']} wanted",
        f"master     pid {info['master_pid'] or '-'}, {info['restarts']} restart(s)",
        f"out log    {info['logs']['out']}",
        f"err log    {info['logs']['err']}",
    ]
    if info["error"]:
        out.append(f"last error {info['error']}")
        out += [f"           {line}" for line in (info.get("detail") or "").splitlines()]
    out.append("config")
    out += [f"  {key:<20} {value}" for key, value in info["config"].items()]
    out.append("workers")
    for w in info["workers"]:
        out.append(
            f"  #{w['id']:<3} pid {w['pid']:<8} {w['state']:<9} up {format_uptime(w['uptime'])}"
            f"  restarts {w['restarts']}  mem {format_bytes(w['memory'])}"
            f"  moved {w.get('moved', 0)}"
        )
    out.append("restart history")
    if not info["history"]:
        out.append("  (none)")
    for h in info["history"]:
        when = datetime.datetime.fromtimestamp(h["time"]).strftime("%Y-%m-%d %H:%M:%S")
        error = f" - {h['error']}" if h.get("error") else ""
        out.append(f"  {when}  #{h['worker']} pid {h['pid']}  {h['reason']} ({h['detail']}){error}")
    click.echo("\n".join(out))


@click.command()
@click.argument("name", required=False)
@click.option("--lines", "-n", default=15, show_default=True, help="Lines of history to show.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
@click.option("--err", is_flag=True, help="Only the error log (stderr).")
def logs(name: str | None, lines: int, follow: bool, err: bool) -> None:
    """Show an app's logs (or every app's): NAME.out.log and NAME.err.log."""
    from pmx.logfiles import follow_many, tail_lines

    home = Home.from_env()
    if name:
        try:
            check_name(name)  # a log file is named after its app, never a path
        except ConfigError as exc:
            raise click.BadParameter(exc.message, param_hint="'NAME'") from None
        names = [name]
        if not home.out_log(name).exists() and not home.err_log(name).exists():
            raise click.ClickException(f"no logs for an app named '{name}' in {home.logs}.")
    else:
        names = sorted(
            {p.name[: -len(".out.log")] for p in home.logs.glob("*.out.log")}
            | {p.name[: -len(".err.log")] for p in home.logs.glob("*.err.log")}
        )
    paths = [str(home.err_log(n)) for n in names]
    if not err:
        paths = [p for n in names for p in (str(home.out_log(n)), str(home.err_log(n)))]
    label = {p: Path(p).name.rsplit(".", 2)[0] for p in paths}  # NAME of NAME.out.log
    many = len(names) > 1

    def show(path: str, line: str) -> None:
        click.echo(f"{label[path]} | {line}" if many else line)

    history = [(line[:23], path, line) for path in paths for line in tail_lines(path, lines)]
    for _stamp, path, line in sorted(history, key=lambda item: item[0])[-lines:]:
        show(path, line)
    if follow:
        try:
            for path, line in follow_many(paths):
                show(path, line)
        except KeyboardInterrupt:
            pass


@click.command()
def monit() -> None:
    """Live view of the status table with requests per second; q or Ctrl-C quits."""
    from pmx.cli.monit import run_monit

    run_monit(lambda: call("status"))


UNIT = """\
[Unit]
Description=pmx process manager daemon ({home})
After=network.target

[Service]
Type=simple
Environment=PMX_HOME={home}
ExecStart={python} -m pmx.daemon --resurrect
ExecStop={python} -m pmx kill
TimeoutStopSec=120
Restart=on-failure

[Install]
WantedBy={target}
"""


@click.command()
@click.option("--install", is_flag=True, help="Write the unit file instead of printing it.")
def startup(install: bool) -> None:
    """Print a systemd unit that runs the daemon at boot and resurrects saved apps."""
    home = Home.from_env()
    system = os.geteuid() == 0
    unit = UNIT.format(
        home=home.root, python=sys.executable,
        target="multi-user.target" if system else "default.target",
    )
    if not install:
        click.echo(unit, nl=False)
        return
    if system:
        path = Path("/etc/systemd/system/pmx.service")
        enable = "systemctl daemon-reload && systemctl enable --now pmx"
    else:
        path = Path.home() / ".config/systemd/user/pmx.service"
        enable = "systemctl --user daemon-reload && systemctl --user enable --now pmx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(unit)
    click.echo(f"wrote {path}\nenable it with: {enable}\nsave your apps first: pmx save")
