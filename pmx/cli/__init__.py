"""The ``pmx`` command. Commands parse, call the library, print; nothing else."""

from __future__ import annotations

import click

from pmx import __version__
from pmx.cli.apps import (
    daemon,
    delete,
    kill,
    reload,
    restart,
    resurrect,
    save,
    scale,
    start,
    stop,
)
from pmx.cli.run import run
from pmx.cli.views import describe, logs, monit, startup, status


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pmx")
def cli() -> None:
    """pmx: run and supervise Python web apps (ASGI and WSGI) behind one port."""


for command in (run, start, stop, restart, reload, delete, scale, describe, logs, monit, save,
                resurrect, startup, kill, daemon):
    cli.add_command(command)
cli.add_command(status)
cli.add_command(status, "ls")
cli.add_command(status, "list")


def main() -> None:
    cli(prog_name="pmx")
