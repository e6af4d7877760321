"""``pmx run``: the engine in the foreground."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from pmx.cli.options import app_options, build_config, given, is_config_file, load_file
from pmx.config import SETTINGS, AppConfig
from pmx.errors import BootError, PmxError
from pmx.settings import Scope


class BootFailed(click.ClickException):
    """One line of error, then the tail of the worker's traceback."""

    def __init__(self, error: BootError) -> None:
        super().__init__(error.message)
        self.detail = error.detail

    def show(self, file: Any = None) -> None:
        super().show(file)
        if self.detail:
            out = file or sys.stderr
            for line in self.detail.splitlines():
                click.echo(f"  {line}", file=out, err=True)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s pmx %(levelname)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    logger = logging.getLogger("pmx")
    logger.handlers[:] = [handler]
    logger.setLevel("DEBUG" if level == "trace" else level.upper())
    logger.propagate = False


@click.command()
@app_options(Scope.RUN)
def run(target: str, **opts: Any) -> None:
    """Run TARGET (module:attribute, or a pmx.toml holding one app) with N workers in
    the foreground. Options given with a config file override its values.

    The master listens on --bind and hands each connection to a worker; SIGTERM or
    Ctrl-C stops gracefully (a second Ctrl-C stops at once).
    """
    values = given(opts)
    config = one_app(target, values) if is_config_file(target) else build_config(target, values)
    setup_logging(config.log_level)
    # The engine is imported here, not with the CLI: every other command only talks to
    # the daemon, and loading the master (asyncio, the admin server, prometheus_client)
    # would double the start of each one, `pmx status` included.
    from pmx import aio
    from pmx.master.arbiter import Master

    try:
        aio.run(Master(config).serve())
    except BootError as exc:
        raise BootFailed(exc) from None
    except PmxError as exc:
        raise click.ClickException(str(exc)) from None


def one_app(path: str, overrides: dict[str, Any]) -> AppConfig:
    """The app of a config file that must hold one; the options given override it."""
    configs = load_file(path, {}, overrides)
    if len(configs) != 1:
        names = ", ".join(f"'{c.name}'" for c in configs)
        raise click.ClickException(
            f"config file '{path}' holds {len(configs)} apps ({names}); pmx run runs one: "
            f"start them all with 'pmx start {path}', or give pmx run a file with one [[app]]."
        )
    config = configs[0]
    for row in SETTINGS:  # keys the file may hold that mean something under the daemon only
        if Scope.RUN not in row.scope and getattr(config, row.name) != row.default:
            click.echo(f"Warning: '{row.key}' in config file '{path}' is used only when the "
                       "daemon runs the app (pmx start); pmx run ignores it.", err=True)
    return config
