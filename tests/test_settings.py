"""The settings table and what is derived from it: options, hints, validation."""

from __future__ import annotations

import pytest

from pmx.cli.apps import start
from pmx.cli.options import PARAM_HINTS
from pmx.cli.run import run
from pmx.config import OPTIONS, SETTINGS, AppConfig
from pmx.configfile import _KEYS
from pmx.settings import Scope


def option_names(command):
    return {p.name for p in command.params}


def test_each_command_has_an_option_for_each_setting_it_accepts():
    for command, scope in ((run, Scope.RUN), (start, Scope.START)):
        names = option_names(command)
        for row in OPTIONS:
            if row.flags:
                assert (row.name in names) == (scope in row.scope), (command.name, row.name)
    assert "log_max_size" not in option_names(run)
    assert {"log_max_size", "log_backups", "as_json"} <= option_names(start)


def test_every_option_defaults_to_not_given():
    for param in run.params:
        if param.name != "target":
            assert param.default is None, param.name


@pytest.mark.parametrize(
    ("name", "hint"),
    [("app", "'TARGET'"), ("workers", "'-i' / '--workers'"), ("bind", "'--bind'"),
     ("env", "'--env'"), ("access_log", "'--access-log'"), ("log_max_size", "'--log-max-size'")],
)
def test_param_hints(name, hint):
    assert PARAM_HINTS[name] == hint


def test_file_keys_are_the_settings_in_dash_spelling_plus_host_and_port():
    assert set(_KEYS) == {row.name.replace("_", "-") for row in SETTINGS} | {"host", "port"}


def test_validate_runs_every_settings_parser():
    config = AppConfig(app="main:app", max_memory="1K", log_max_size="2K", workers="3",
                       health_fall="4", header_timeout="0.5", bind=":9000").validate()
    assert (config.max_memory, config.log_max_size, config.workers) == (1024, 2048, 3)
    assert (config.health_fall, config.header_timeout, config.bind) == (4, 0.5, "0.0.0.0:9000")


@pytest.mark.parametrize(
    ("name", "shown"),
    [("workers", "`1`"), ("graceful_timeout", "`30`"), ("access_log", "on"), ("env", ""),
     ("balance", "`auto`"), ("log_max_size", "`10M`")],
)
def test_shown_default(name, shown):
    row = next(r for r in SETTINGS if r.name == name)
    assert row.shown_default == shown


def test_rows_carry_their_fields_name_and_default():
    assert [row.name for row in SETTINGS] == list(AppConfig.__dataclass_fields__)
    defaults = AppConfig(app="main:app")
    for row in SETTINGS[1:]:
        assert row.default == getattr(defaults, row.name)
    assert SETTINGS[0].required and not any(row.required for row in SETTINGS[1:])
