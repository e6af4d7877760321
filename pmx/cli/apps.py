"""Verbs that change what the daemon runs: start, stop, restart, delete, scale, save,
resurrect, kill, and ``daemon`` (the daemon in the foreground)."""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import click

from pmx.cli.options import app_options, build_config, given, is_config_file, load_file
from pmx.cli.run import BootFailed
from pmx.cli.table import render_table
from pmx.config import SETTINGS, AppConfig
from pmx.daemon import client
from pmx.daemon.paths import Home
from pmx.errors import BootError, PmxError
from pmx.settings import Scope

NAME = click.argument("name", metavar="NAME|all")


def call(verb: str, args: dict[str, Any] | None = None, start_daemon: bool = False,
         timeout: float = 120.0) -> Any:
    """One request to the daemon; errors become click errors (exit 1)."""
    home = Home.from_env()
    try:
        if start_daemon:
            client.ensure_daemon(home)
        return client.request(home, verb, args, timeout=timeout)
    except client.DaemonNotRunning:
        raise click.ClickException(
            f"no pmx daemon is running for {home.root}; start an app with 'pmx start'."
        ) from None
    except BootError as exc:
        raise BootFailed(exc) from None
    except PmxError as exc:
        raise click.ClickException(str(exc)) from None


def print_status(snapshot: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(snapshot, indent=2))
    else:
        click.echo(render_table(snapshot, shutil.get_terminal_size().columns))


@click.command()
@app_options(Scope.START)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def start(target: str, as_json: bool, **opts: Any) -> None:
    """Start TARGET (module:attribute) in the background daemon, or every app of a
    pmx.toml config file, whose values the options given here override. Waits until
    the app is ready or has failed."""
    values = given(opts)
    # pmx start's own defaults: the daemon's working directory is /, and an app gets
    # an admin endpoint unless told otherwise.
    defaults = {row.name: row.start_default for row in SETTINGS if row.start_default is not None}
    configs: list[AppConfig]
    if is_config_file(target):
        configs = load_file(target, defaults, values)
    else:
        if not values.get("app_dir"):
            values["app_dir"] = os.getcwd()
        configs = [build_config(target, {**defaults, **values})]
    result = call("start", {"configs": [c.to_dict() for c in configs]}, start_daemon=True)
    print_status(result, as_json)


@click.command()
@NAME
def stop(name: str) -> None:
    """Stop an app (or all) gracefully; it stays listed as stopped."""
    print_status(call("stop", {"name": name}))


@click.command()
@NAME
def restart(name: str) -> None:
    """Stop then start an app (or all). For zero downtime, see reload."""
    print_status(call("restart", {"name": name}))


@click.command()
@NAME
@click.option("--parallel", default=1, show_default=True, type=click.IntRange(min=1),
              help="Workers replaced at a time.")
def reload(name: str, parallel: int) -> None:
    """Zero-downtime rolling reload: each worker is replaced by a fresh one running the
    code on disk, which must be ready before the old one drains. If a new worker fails,
    the reload stops, the old workers keep serving, and this exits 1 with its error."""
    result = call("reload", {"name": name, "parallel": parallel}, timeout=24 * 3600)
    for app, pids in result["reloaded"].items():
        click.echo(f"reloaded {app}: new pids {' '.join(str(p) for p in pids)}")


@click.command()
@NAME
def delete(name: str) -> None:
    """Stop an app (or all) and forget it."""
    deleted = call("delete", {"name": name})["deleted"]
    click.echo(f"deleted {', '.join(deleted)}" if deleted else "nothing to delete")


@click.command()
@click.argument("name")
@click.argument("workers", metavar="N")
def scale(name: str, workers: str) -> None:
    """Grow or shrink an app to N workers; removed workers finish their requests first."""
    print_status(call("scale", {"name": name, "workers": workers}))


@click.command()
def save() -> None:
    """Remember the running apps, for 'pmx resurrect'."""
    result = call("save")
    click.echo(f"saved {len(result['saved'])} app(s) to {result['path']}")


@click.command()
def resurrect() -> None:
    """Start the apps saved by 'pmx save', with the same names, options and ports."""
    print_status(call("resurrect", start_daemon=True))


@click.command()
def kill() -> None:
    """Stop every app gracefully, then the daemon."""
    home = Home.from_env()
    pid = client.daemon_pid(home)
    if pid is None:
        click.echo("no pmx daemon is running")
        return
    result = call("kill")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    click.echo(f"stopped {len(result['stopped'])} app(s) and the daemon (pid {pid})")


@click.command(hidden=True)
@click.option("--resurrect", is_flag=True, help="Start the saved apps first.")
def daemon(resurrect: bool) -> None:
    """Run the daemon in the foreground (what 'pmx startup' installs)."""
    from pmx.daemon.server import run as run_daemon

    run_daemon(Home.from_env(), resurrect=resurrect)
