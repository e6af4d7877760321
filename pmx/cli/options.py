"""The options of ``pmx run`` and ``pmx start``, made from the settings table
(``pmx/config.py``), and their conversion to AppConfig.

Every option defaults to None (a repeated one to ``()``), so that what was given on the
command line is told apart from what was not: a TARGET gets AppConfig's defaults for the
rest, a config file its own values.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pmx.config import OPTIONS, SETTINGS, AppConfig
from pmx.configfile import ConfigFileError, load_config_file
from pmx.errors import ConfigError
from pmx.settings import Scope, Setting

# How each AppConfig field is spelled on the command line, for error messages.
PARAM_HINTS = {row.name: row.param_hint for row in SETTINGS}


def _option(row: Setting) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    text = row.shown_default.replace("`", "")
    help_text = f"{row.help}  [default: {text}]" if text else row.help
    if row.is_flag:
        long = row.long_flag
        return click.option(f"{long}/--no-{long[2:]}", default=None, help=help_text)
    extra: dict[str, Any] = {}
    if row.kind.choices:
        extra["type"] = click.Choice(row.kind.choices)
    else:
        extra["metavar"] = row.shown_metavar or None
    if row.kind.multiple:
        extra["multiple"] = True
    if row.kind.bare_value:
        extra.update(is_flag=False, flag_value=row.kind.bare_value)
    return click.option(*row.flags, row.name, default=None, help=help_text, **extra)


def app_options(scope: Scope) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The TARGET argument and an option for each setting ``scope`` accepts."""
    decorators: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.argument("target"),
        *(_option(row) for row in OPTIONS if row.flags and scope in row.scope),
    ]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return decorate


def given(opts: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line, as AppConfig fields take them (``host``
    and ``port`` kept apart); bad values become click errors."""
    values = {}
    for row in OPTIONS:
        value = opts.get(row.name)
        if value is None or value == ():
            continue
        if row.kind.from_cli:
            value = _click_errors(row.kind.from_cli, value)
        values[row.name] = value
    if "bind" in values and ("host" in values or "port" in values):
        raise click.UsageError("Use either --bind or --host/--port, not both.")
    return values


def is_config_file(target: str) -> bool:
    return target.endswith(".toml") or os.path.isfile(target)


def build_config(target: str, values: dict[str, Any]) -> AppConfig:
    """AppConfig of TARGET from ``given()`` values; bad values become click errors that
    name the option, quote the value and say what is expected."""
    values = dict(values)
    host, port = values.pop("host", None), values.pop("port", None)
    if host is not None or port is not None:
        values["bind"] = f"{host or '127.0.0.1'}:{port if port is not None else 8000}"
    return _click_errors(lambda: AppConfig(app=target, **values).validate())


def load_file(path: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> list[AppConfig]:
    """The apps of config file ``path``, with the app directory defaulting to the file's
    and the options given on the command line in place of the file's values."""
    defaults = {"app_dir": str(Path(path).resolve().parent), **defaults}
    try:
        return _click_errors(lambda: load_config_file(path, defaults, overrides))
    except ConfigFileError as exc:
        raise click.ClickException(str(exc)) from None


def _click_errors(func: Callable[..., Any], *args: Any) -> Any:
    try:
        return func(*args)
    except ConfigError as exc:
        raise click.BadParameter(exc.message, param_hint=PARAM_HINTS.get(exc.key)) from None
