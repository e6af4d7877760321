import dataclasses
import json
import os

import pytest

from pmx.config import (
    BALANCE_POLICIES,
    INTERFACES,
    LOG_LEVELS,
    AppConfig,
    BindAddress,
    check_choice,
    check_env_key,
    check_import_string,
    check_name,
    parse_bind,
    parse_env_item,
    parse_positive_int,
    parse_seconds,
    parse_workers,
)
from pmx.cpus import usable_cpus
from pmx.errors import ConfigError, PmxError


def assert_config_error(exc_info, key, message):
    assert exc_info.value.key == key
    assert exc_info.value.message == message
    assert str(exc_info.value) == message


def test_config_error_is_a_pmx_error():
    error = ConfigError("workers", "bad.")
    assert isinstance(error, PmxError)
    assert (error.key, error.message, str(error)) == ("workers", "bad.", "bad.")


# -- workers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        (1, 1),
        (4, 4),
        ("4", 4),
        (" 8 ", 8),
        ("016", 16),
    ],
)
def test_parse_workers(value, expect):
    assert parse_workers(value) == expect


def test_parse_workers_max_is_the_usable_cpu_count():
    assert parse_workers("max") == usable_cpus() >= 1
    assert parse_workers(" max ") == usable_cpus()


@pytest.mark.parametrize(
    "value",
    ["abc", "", "0", 0, "-1", -2, "1.5", 2.0, "MAX", "4 workers", True, False, None],
)
def test_parse_workers_invalid(value):
    with pytest.raises(ConfigError) as exc_info:
        parse_workers(value)
    assert_config_error(
        exc_info,
        "workers",
        f"'{value}' is not a valid worker count: expected a whole number >= 1 or 'max'.",
    )


def test_parse_workers_abc_message():
    with pytest.raises(ConfigError) as exc_info:
        parse_workers("abc")
    assert_config_error(
        exc_info,
        "workers",
        "'abc' is not a valid worker count: expected a whole number >= 1 or 'max'.",
    )


def test_parse_workers_superscript_digit_is_config_error():
    with pytest.raises(ConfigError) as exc_info:
        parse_workers("²")
    assert exc_info.value.key == "workers"


# -- bind ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expect", "text"),
    [
        ("127.0.0.1:8000", BindAddress(host="127.0.0.1", port=8000), "127.0.0.1:8000"),
        (" 127.0.0.1:8000 ", BindAddress(host="127.0.0.1", port=8000), "127.0.0.1:8000"),
        ("localhost:80", BindAddress(host="localhost", port=80), "localhost:80"),
        (":9000", BindAddress(host="0.0.0.0", port=9000), "0.0.0.0:9000"),
        ("0.0.0.0:65535", BindAddress(host="0.0.0.0", port=65535), "0.0.0.0:65535"),
        ("[::1]:8000", BindAddress(host="::1", port=8000), "[::1]:8000"),
        ("[::]:443", BindAddress(host="::", port=443), "[::]:443"),
        ("[fe80::1]:8080", BindAddress(host="fe80::1", port=8080), "[fe80::1]:8080"),
        ("unix:/tmp/x.sock", BindAddress(path="/tmp/x.sock"), "unix:/tmp/x.sock"),
    ],
)
def test_parse_bind(value, expect, text):
    address = parse_bind(value)
    assert address == expect
    assert str(address) == text
    assert address.is_unix == bool(expect.path)
    # The normalised text parses back to the same address.
    assert parse_bind(str(address)) == address


def test_parse_bind_unix_relative_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    address = parse_bind("unix:run/app.sock")
    assert address.is_unix
    assert os.path.isabs(address.path)
    assert address.path == os.path.join(os.getcwd(), "run", "app.sock")
    assert str(address) == f"unix:{address.path}"
    assert (address.host, address.port) == ("", 0)


@pytest.mark.parametrize(
    "value",
    [
        "nope",
        "",
        "1.2.3.4:99999",
        "1.2.3.4:65536",
        "host:abc",
        "host:",
        "host:-1",
        "host:80 80",
        "unix:",
        " unix: ",
        "[::1]",
        "[::1]8000",
        "[::1]:",
        "[::1]:http",
        "[zz::]:80",
        "::g:80",
    ],
)
def test_parse_bind_invalid(value):
    with pytest.raises(ConfigError) as exc_info:
        parse_bind(value)
    assert_config_error(
        exc_info,
        "bind",
        f"'{value}' is not a valid bind address: expected HOST:PORT or unix:PATH.",
    )


@pytest.mark.parametrize("value", ["[zz]:80", "[localhost]:80", "[]:80"])
def test_parse_bind_invalid_bracketed_host(value):
    with pytest.raises(ConfigError) as exc_info:
        parse_bind(value)
    assert_config_error(
        exc_info,
        "bind",
        f"'{value}' is not a valid bind address: expected HOST:PORT or unix:PATH.",
    )


def test_parse_bind_superscript_port_is_config_error():
    with pytest.raises(ConfigError):
        parse_bind("127.0.0.1:²")


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (BindAddress(host="10.0.0.1", port=1), "10.0.0.1:1"),
        (BindAddress(host="::1", port=2), "[::1]:2"),
        (BindAddress(path="/run/a.sock"), "unix:/run/a.sock"),
    ],
)
def test_bind_address_str(address, text):
    assert str(address) == text


# -- import string, name, choices ------------------------------------------------------


@pytest.mark.parametrize("value", ["main:app", "pkg.mod:app", "pkg.mod:factory.app"])
def test_check_import_string(value):
    assert check_import_string(value) == value


@pytest.mark.parametrize("value", ["main", "", ":", ":app", "main:", "main.app"])
def test_check_import_string_invalid(value):
    with pytest.raises(ConfigError) as exc_info:
        check_import_string(value)
    assert_config_error(
        exc_info, "app", f'Import string "{value}" must be in format "<module>:<attribute>".'
    )


def test_check_import_string_main_message():
    with pytest.raises(ConfigError) as exc_info:
        check_import_string("main")
    assert_config_error(
        exc_info, "app", 'Import string "main" must be in format "<module>:<attribute>".'
    )


@pytest.mark.parametrize("value", ["api", "my-app", "my_app.v2", "0app", "a" * 64])
def test_check_name(value):
    assert check_name(value) == value


@pytest.mark.parametrize("value", ["", "-app", ".app", "my app", "app/1", "a" * 65, "ápp"])
def test_check_name_invalid(value):
    with pytest.raises(ConfigError) as exc_info:
        check_name(value)
    assert_config_error(
        exc_info,
        "name",
        f"'{value}' is not a valid app name: expected letters, digits, '.', '_' or '-'.",
    )


def test_check_name_rejects_trailing_newline():
    with pytest.raises(ConfigError):
        check_name("app\n")


@pytest.mark.parametrize(
    ("key", "choices"),
    [("balance", BALANCE_POLICIES), ("interface", INTERFACES), ("log_level", LOG_LEVELS)],
)
def test_check_choice_accepts_every_choice(key, choices):
    for choice in choices:
        assert check_choice(key, choice, choices) == choice


@pytest.mark.parametrize(
    ("key", "value", "choices", "message"),
    [
        (
            "balance",
            "random",
            BALANCE_POLICIES,
            "'random' is not one of 'auto', 'round-robin', 'least-conn', 'least-busy', 'packed'.",
        ),
        (
            "interface",
            "ASGI",
            INTERFACES,
            "'ASGI' is not one of 'auto', 'asgi', 'wsgi'.",
        ),
        (
            "log_level",
            "",
            LOG_LEVELS,
            "'' is not one of 'critical', 'error', 'warning', 'info', 'debug', 'trace'.",
        ),
        ("x", "b", ("a",), "'b' is not one of 'a'."),
    ],
)
def test_check_choice_invalid(key, value, choices, message):
    with pytest.raises(ConfigError) as exc_info:
        check_choice(key, value, choices)
    assert_config_error(exc_info, key, message)


# -- numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expect"),
    [(0, 0.0), ("0", 0.0), (30, 30.0), ("1.5", 1.5), (" 2.5 ", 2.5), (0.25, 0.25), ("1e1", 10.0)],
)
def test_parse_seconds(value, expect):
    result = parse_seconds("graceful_timeout", value)
    assert result == expect
    assert isinstance(result, float)


@pytest.mark.parametrize("value", ["abc", "", "-1", -0.5, "nan", float("nan"), None, "1s"])
def test_parse_seconds_invalid(value):
    with pytest.raises(ConfigError) as exc_info:
        parse_seconds("graceful_timeout", value)
    assert_config_error(
        exc_info,
        "graceful_timeout",
        f"'{value}' is not a valid duration: expected seconds >= 0.",
    )


@pytest.mark.parametrize(("value", "expect"), [(1, 1), ("5", 5), (" 2048 ", 2048)])
def test_parse_positive_int(value, expect):
    assert parse_positive_int("backlog", value) == expect


@pytest.mark.parametrize("value", [0, "0", "-3", "1.0", 1.0, "x", "", True])
def test_parse_positive_int_invalid(value):
    with pytest.raises(ConfigError) as exc_info:
        parse_positive_int("backlog", value)
    assert_config_error(
        exc_info, "backlog", f"'{value}' is not valid: expected a whole number >= 1."
    )


# -- env -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expect"),
    [
        ("FOO=bar", ("FOO", "bar")),
        ("FOO=a=b", ("FOO", "a=b")),
        ("FOO=", ("FOO", "")),
        ("_X1=  spaced ", ("_X1", "  spaced ")),
        ("lower=1", ("lower", "1")),
    ],
)
def test_parse_env_item(item, expect):
    assert parse_env_item(item) == expect


@pytest.mark.parametrize("item", ["FOO", "", "FOO:bar"])
def test_parse_env_item_missing_equals(item):
    with pytest.raises(ConfigError) as exc_info:
        parse_env_item(item)
    assert_config_error(exc_info, "env", f"'{item}' is not valid: expected KEY=VALUE.")


@pytest.mark.parametrize(
    ("item", "key"),
    [("1X=2", "1X"), ("=x", ""), ("MY-VAR=1", "MY-VAR"), ("A B=1", "A B"), (" FOO=1", " FOO")],
)
def test_parse_env_item_invalid_key(item, key):
    with pytest.raises(ConfigError) as exc_info:
        parse_env_item(item)
    assert_config_error(exc_info, "env", f"'{key}' is not a valid environment variable name.")


def test_check_env_key_rejects_trailing_newline():
    with pytest.raises(ConfigError):
        check_env_key("FOO\n")


# -- AppConfig -------------------------------------------------------------------------


def test_validate_defaults():
    config = AppConfig(app="main:app")
    assert config.validate() is config
    assert config.name == "main"
    assert config.workers == 1
    assert config.bind == "127.0.0.1:8000"
    assert config.bind_address == BindAddress(host="127.0.0.1", port=8000)
    assert config.app_dir == ""


@pytest.mark.parametrize(
    ("app", "name"),
    [("main:app", "main"), ("pkg.web.asgi:application", "pkg.web.asgi")],
)
def test_validate_fills_name_from_module(app, name):
    assert AppConfig(app=app).validate().name == name


def test_validate_keeps_explicit_name():
    assert AppConfig(app="main:app", name="api").validate().name == "api"


@pytest.mark.parametrize(
    ("bind", "expect"),
    [
        (":9000", "0.0.0.0:9000"),
        (" 127.0.0.1:8000 ", "127.0.0.1:8000"),
        ("[::1]:8000", "[::1]:8000"),
        ("unix:/tmp/x.sock", "unix:/tmp/x.sock"),
    ],
)
def test_validate_normalises_bind(bind, expect):
    config = AppConfig(app="main:app", bind=bind).validate()
    assert config.bind == expect
    assert config.bind_address == parse_bind(bind)


def test_validate_normalises_relative_unix_bind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = AppConfig(app="main:app", bind="unix:app.sock").validate()
    assert config.bind == f"unix:{os.path.join(os.getcwd(), 'app.sock')}"


def test_validate_parses_values():
    config = AppConfig(
        app="main:app",
        workers="max",
        graceful_timeout="2.5",
        max_boot_failures="3",
        timeout_keep_alive="10",
        backlog="64",
    ).validate()
    assert config.workers == usable_cpus()
    assert config.graceful_timeout == 2.5
    assert config.max_boot_failures == 3
    assert config.timeout_keep_alive == 10
    assert config.backlog == 64


def test_validate_app_dir_becomes_absolute(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    config = AppConfig(app="main:app", app_dir="src").validate()
    assert config.app_dir == os.path.join(os.getcwd(), "src")


def test_validate_rejects_missing_app_dir(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(ConfigError) as exc_info:
        AppConfig(app="main:app", app_dir=missing).validate()
    assert_config_error(exc_info, "app_dir", f"'{missing}' is not a directory.")


def test_validate_rejects_file_as_app_dir(tmp_path):
    path = tmp_path / "file.py"
    path.write_text("")
    with pytest.raises(ConfigError) as exc_info:
        AppConfig(app="main:app", app_dir=str(path)).validate()
    assert_config_error(exc_info, "app_dir", f"'{path}' is not a directory.")


@pytest.mark.parametrize(
    ("kwargs", "key", "message"),
    [
        (
            {"app": "main"},
            "app",
            'Import string "main" must be in format "<module>:<attribute>".',
        ),
        (
            {"app": "main:app", "name": "my app"},
            "name",
            "'my app' is not a valid app name: expected letters, digits, '.', '_' or '-'.",
        ),
        (
            {"app": "main:app", "workers": 0},
            "workers",
            "'0' is not a valid worker count: expected a whole number >= 1 or 'max'.",
        ),
        (
            {"app": "main:app", "bind": "nope"},
            "bind",
            "'nope' is not a valid bind address: expected HOST:PORT or unix:PATH.",
        ),
        (
            {"app": "main:app", "balance": "random"},
            "balance",
            "'random' is not one of 'auto', 'round-robin', 'least-conn', 'least-busy', 'packed'.",
        ),
        (
            {"app": "main:app", "interface": "cgi"},
            "interface",
            "'cgi' is not one of 'auto', 'asgi', 'wsgi'.",
        ),
        (
            {"app": "main:app", "log_level": "INFO"},
            "log_level",
            "'INFO' is not one of 'critical', 'error', 'warning', 'info', 'debug', 'trace'.",
        ),
        (
            {"app": "main:app", "graceful_timeout": -1},
            "graceful_timeout",
            "'-1' is not a valid duration: expected seconds >= 0.",
        ),
        (
            {"app": "main:app", "max_boot_failures": 0},
            "max_boot_failures",
            "'0' is not valid: expected a whole number >= 1.",
        ),
        (
            {"app": "main:app", "timeout_keep_alive": "x"},
            "timeout_keep_alive",
            "'x' is not valid: expected a whole number >= 1.",
        ),
        (
            {"app": "main:app", "backlog": -5},
            "backlog",
            "'-5' is not valid: expected a whole number >= 1.",
        ),
        (
            {"app": "main:app", "env": {"OK": "1", "1X": "2"}},
            "env",
            "'1X' is not a valid environment variable name.",
        ),
    ],
)
def test_validate_invalid(kwargs, key, message):
    with pytest.raises(ConfigError) as exc_info:
        AppConfig(**kwargs).validate()
    assert_config_error(exc_info, key, message)


def test_validate_is_idempotent():
    config = AppConfig(app="main:app", workers="2", bind=":9000").validate()
    first = config.to_dict()
    assert config.validate().to_dict() == first


def test_from_dict_rejects_unknown_key():
    with pytest.raises(ConfigError) as exc_info:
        AppConfig.from_dict({"app": "main:app", "nope": 1})
    assert_config_error(exc_info, "nope", "unknown key 'nope'.")


def test_to_dict_has_every_field():
    data = AppConfig(app="main:app").to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(AppConfig)}
    assert data["app"] == "main:app"


def test_to_dict_copies_env():
    config = AppConfig(app="main:app", env={"A": "1"})
    data = config.to_dict()
    data["env"]["B"] = "2"
    assert config.env == {"A": "1"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"app": "main:app"},
        {
            "app": "pkg.web:app",
            "name": "web",
            "workers": 3,
            "bind": "unix:/tmp/web.sock",
            "balance": "least-conn",
            "interface": "wsgi",
            "env": {"A": "1", "B": "x=y"},
            "graceful_timeout": 2.5,
            "max_boot_failures": 2,
            "log_level": "debug",
            "access_log": False,
            "timeout_keep_alive": 7,
            "backlog": 128,
            "proxy_headers": False,
            "forwarded_allow_ips": "*",
        },
    ],
)
def test_dict_round_trip(kwargs):
    config = AppConfig(**kwargs).validate()
    data = config.to_dict()
    assert AppConfig.from_dict(data) == config
    # What the master sends to each worker is JSON: it must survive the trip as is.
    wire = json.loads(json.dumps(data))
    assert wire == data
    assert AppConfig.from_dict(wire) == config
    assert AppConfig.from_dict(wire).validate() == config
