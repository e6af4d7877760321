"""The ``pmx`` command. Commands parse, call the library, print; nothing else."""

from __future__ import annotations

import click

from pmx import __version__
from pmx.cli.run import run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pmx")
def cli() -> None:
    """pmx: run and supervise Python web apps (ASGI and WSGI) behind one port."""


cli.add_command(run)


def main() -> None:
    cli(prog_name="pmx")
