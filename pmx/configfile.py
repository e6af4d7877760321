"""Load several apps from a TOML config file (``pmx start pmx.toml``).

The file holds one ``[[app]]`` table per app::

    [[app]]
    name = "api"                              # optional; default: the module name
    app = "examples.fastapi_app.main:app"     # required: module:attribute
    workers = 4                               # or "max"
    bind = "127.0.0.1:8000"
    balance = "least-conn"
    env = { DATABASE_URL = "sqlite:///db.sqlite3" }
    graceful-timeout = 30
    log-max-size = "10M"

    [[app]]
    app = "examples.django_app.mysite.wsgi:application"
    bind = "127.0.0.1:8001"

Keys are the long options of ``pmx run`` / ``pmx start`` without the leading ``--``:
``name``, ``workers``, ``bind``, ``host``, ``port``, ``balance``, ``interface``,
``app-dir``, ``env``, ``graceful-timeout``, ``max-boot-failures``, ``log-level``,
``access-log``, ``timeout-keep-alive``, ``header-timeout``, ``backlog``, ``proxy-headers``,
``forwarded-allow-ips``, ``log-max-size`` and ``log-backups``, plus ``app`` for the
import string (the CLI's TARGET). ``app_dir`` and the other underscore spellings are
accepted too.

Values:

- string keys (``app``, ``name``, ``bind``, ``host``, ``balance``, ``interface``,
  ``app-dir``, ``log-level``, ``forwarded-allow-ips``) take a string;
- numeric keys (``workers``, ``port``, ``graceful-timeout``, ``max-boot-failures``,
  ``timeout-keep-alive``, ``header-timeout``, ``backlog``, ``log-max-size``,
  ``log-backups``) take a number
  or a string (``workers = "max"``, ``log-max-size = "10M"``);
- ``access-log``, ``proxy-headers`` and ``rebalance`` take ``true`` or ``false``;
- ``env`` takes a table; its values are strings, numbers and booleans are converted
  with ``str()``.

``host`` and ``port`` are combined into ``bind`` as on the command line (the host
defaults to 127.0.0.1, the port to 8000); giving them together with ``bind`` is an
error. A relative ``app-dir``, or the path of a relative ``bind = "unix:PATH"``, is
taken relative to the directory of the config file, and ``~`` is expanded in both.

Every app is validated with :meth:`AppConfig.validate`. App names must be unique within
a file, and two apps may not bind the same address (port 0 excepted). Every problem is
reported as a one-line :class:`ConfigFileError` that names the file, the app (its
``name``, or ``app #N`` counting from 1), the key as spelled in the file, quotes the
value and says what is expected.
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

from pmx.config import AppConfig, BindAddress, parse_bind
from pmx.errors import ConfigError, PmxError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = ["ConfigFileError", "load_config_file"]


class ConfigFileError(PmxError):
    """A config file cannot be read, is not valid TOML, or holds an invalid app.

    ``path`` is the file as given; ``message`` is the whole one-line message.
    """

    def __init__(self, path: str, message: str) -> None:
        message = _one_line(message)
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class _Key:
    field: str  # the AppConfig field it sets ("" for host and port)
    kind: str  # "str", "number", "bool" or "env"
    expected: str  # for a value of the wrong TOML type


_STRING = "expected a string."
_WHOLE = "expected a whole number."
_BOOL = "expected true or false."

# Every key of an [[app]] table, in its dash spelling.
_KEYS: dict[str, _Key] = {
    "app": _Key("app", "str", _STRING),
    "name": _Key("name", "str", _STRING),
    "workers": _Key("workers", "number", 'expected a whole number or "max".'),
    "bind": _Key("bind", "str", _STRING),
    "host": _Key("", "str", _STRING),
    "port": _Key("", "number", "expected a port number."),
    "balance": _Key("balance", "str", _STRING),
    "rebalance": _Key("rebalance", "bool", _BOOL),
    "interface": _Key("interface", "str", _STRING),
    "app-dir": _Key("app_dir", "str", _STRING),
    "env": _Key("env", "env", 'expected a table, e.g. env = { KEY = "value" }.'),
    "graceful-timeout": _Key("graceful_timeout", "number", "expected a number of seconds."),
    "max-boot-failures": _Key("max_boot_failures", "number", _WHOLE),
    "log-level": _Key("log_level", "str", _STRING),
    "access-log": _Key("access_log", "bool", _BOOL),
    "timeout-keep-alive": _Key("timeout_keep_alive", "number", _WHOLE),
    "header-timeout": _Key("header_timeout", "number", "expected a number of seconds."),
    "backlog": _Key("backlog", "number", _WHOLE),
    "proxy-headers": _Key("proxy_headers", "bool", _BOOL),
    "forwarded-allow-ips": _Key("forwarded_allow_ips", "str", _STRING),
    "log-max-size": _Key(
        "log_max_size", "number", 'expected a number of bytes or a size like "10M".'
    ),
    "log-backups": _Key("log_backups", "number", _WHOLE),
    "ready-timeout": _Key("ready_timeout", "number", "expected a number of seconds."),
    "max-requests": _Key("max_requests", "number", _WHOLE),
    "max-requests-jitter": _Key("max_requests_jitter", "number", _WHOLE),
    "max-memory": _Key("max_memory", "number", 'expected a size like "300M".'),
    "memory-interval": _Key("memory_interval", "number", "expected a number of seconds."),
    "health-path": _Key("health_path", "str", _STRING),
    "health-interval": _Key("health_interval", "number", "expected a number of seconds."),
    "health-timeout": _Key("health_timeout", "number", "expected a number of seconds."),
    "health-fall": _Key("health_fall", "number", _WHOLE),
    "health-rise": _Key("health_rise", "number", _WHOLE),
    "admin": _Key("admin", "str", _STRING),
    "watch": _Key("watch", "paths", "expected true, a path or a list of paths."),
}

# AppConfig field name -> dash spelling, for keys that were not in the file.
_FIELD_KEYS = {key.field: name for name, key in _KEYS.items() if key.field}


def load_config_file(path: str) -> list[AppConfig]:
    """Parse a pmx.toml; every app validated. Raises ConfigFileError."""
    data = _read(path)
    for key in data:
        if key != "app":
            raise ConfigFileError(
                path,
                f"config file '{path}': unknown top-level key '{key}'; expected [[app]] tables.",
            )
    tables = data.get("app", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigFileError(
            path,
            f"config file '{path}': top-level key 'app' = {_show(tables)} is not valid: "
            "expected [[app]] tables.",
        )
    if not tables:
        raise ConfigFileError(path, f"config file '{path}' has no [[app]] tables.")
    base_dir = os.path.dirname(os.path.abspath(path))
    configs = [_load_app(path, base_dir, n, table) for n, table in enumerate(tables, 1)]
    _check_unique(path, configs)
    return configs


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fp:
            raw = fp.read()
    except FileNotFoundError:
        reason = "no such file"
    except IsADirectoryError:
        reason = "it is a directory"
    except PermissionError:
        reason = "permission denied"
    except OSError as exc:
        reason = exc.strerror or str(exc)
        reason = reason[:1].lower() + reason[1:]
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise ConfigFileError(
                path, f"config file '{path}' is not valid TOML: it is not UTF-8 text (line {line})."
            ) from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigFileError(path, f"config file '{path}' is not valid TOML: {exc}.") from None
    raise ConfigFileError(path, f"cannot read config file '{path}': {reason}.")


def _load_app(path: str, base_dir: str, number: int, table: dict[str, Any]) -> AppConfig:
    name = table.get("name")
    label = f"app '{name}'" if isinstance(name, str) and name else f"app #{number}"
    where = f"config file '{path}': {label}"

    # Which spelling the file used for each key (dash form -> as written).
    spelled: dict[str, str] = {}
    for written in table:
        key = written.replace("_", "-")
        if key not in _KEYS:
            raise ConfigFileError(path, f"{where}: unknown key '{written}'.{_suggest(written)}")
        if key in spelled:
            raise ConfigFileError(
                path, f"{where}: key '{key}' is given twice, as '{spelled[key]}' and '{written}'."
            )
        spelled[key] = written
    if "app" not in spelled:
        raise ConfigFileError(
            path, f"{where}: missing key 'app' (the import string, module:attribute)."
        )

    values: dict[str, Any] = {}
    for key, written in spelled.items():
        values[key] = _check_type(path, where, written, _KEYS[key], table[written])

    # Field name -> key as written, for ConfigErrors raised while validating.
    shown = {_KEYS[key].field: written for key, written in spelled.items() if _KEYS[key].field}
    fields = {_KEYS[key].field: value for key, value in values.items() if _KEYS[key].field}

    if "host" in values or "port" in values:
        if "bind" in values:
            hosts = "/".join(f"'{spelled[k]}'" for k in ("host", "port") if k in spelled)
            raise ConfigFileError(
                path, f"{where}: use either '{spelled['bind']}' or {hosts}, not both."
            )
        fields["bind"] = _host_port(path, where, spelled, values)
        shown["bind"] = spelled.get("host", "port")
    elif isinstance(fields.get("bind"), str):
        fields["bind"] = _resolve_unix(base_dir, fields["bind"])
    if fields.get("app_dir"):
        fields["app_dir"] = os.path.join(base_dir, os.path.expanduser(fields["app_dir"]))

    try:
        return AppConfig.from_dict(fields).validate()
    except ConfigError as exc:
        key = shown.get(exc.key) or _FIELD_KEYS.get(exc.key) or exc.key
        raise ConfigFileError(path, f"{where}: key '{key}': {exc.message}") from None


def _check_type(path: str, where: str, written: str, key: _Key, value: Any) -> Any:
    if key.kind == "env" and isinstance(value, dict):
        return _env(path, where, written, value)
    if key.kind == "paths":  # watch = true | "src" | ["src", "lib"]
        base = os.path.dirname(os.path.abspath(path))
        if value is True:
            return [base]
        if value is False:
            return []
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [os.path.join(base, os.path.expanduser(v)) for v in value]
    if key.kind == "str":
        ok = isinstance(value, str)
    elif key.kind == "number":
        ok = isinstance(value, (int, float, str)) and not isinstance(value, bool)
    else:
        ok = key.kind == "bool" and isinstance(value, bool)
    if not ok:
        raise ConfigFileError(
            path, f"{where}: key '{written}': {_show(value)} is not valid: {key.expected}"
        )
    return value


def _env(path: str, where: str, written: str, table: dict[str, Any]) -> dict[str, str]:
    env = {}
    for name, value in table.items():
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigFileError(
                path,
                f"{where}: key '{written}.{name}': {_show(value)} is not valid: "
                "expected a string, a number or a boolean.",
            )
        env[name] = str(value)
    return env


def _host_port(path: str, where: str, spelled: dict[str, str], values: dict[str, Any]) -> str:
    host = values.get("host") or "127.0.0.1"
    port = values.get("port", 8000)
    port_text = str(port).strip()
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ConfigFileError(
            path,
            f"{where}: key '{spelled['port']}': '{port}' is not a valid port: "
            "expected a whole number from 0 to 65535.",
        )
    if host.startswith("unix:"):
        raise ConfigFileError(
            path,
            f"{where}: key '{spelled['host']}': '{host}' is not a valid host: "
            'expected a host name or IP address (use bind = "unix:PATH" for a unix socket).',
        )
    return f"{host}:{int(port_text)}"


def _resolve_unix(base_dir: str, bind: str) -> str:
    text = bind.strip()
    if not text.startswith("unix:") or not text[len("unix:") :]:
        return bind
    return "unix:" + os.path.join(base_dir, os.path.expanduser(text[len("unix:") :]))


def _check_unique(path: str, configs: list[AppConfig]) -> None:
    names: set[str] = set()
    for config in configs:
        if config.name in names:
            raise ConfigFileError(
                path, f"config file '{path}': app name '{config.name}' is used twice."
            )
        names.add(config.name)
    binds: dict[BindAddress, AppConfig] = {}
    for config in configs:
        address = parse_bind(config.bind)
        if not address.is_unix and address.port == 0:
            continue  # each gets a port of its own
        other = binds.setdefault(address, config)
        if other is not config:
            raise ConfigFileError(
                path,
                f"config file '{path}': apps '{other.name}' and '{config.name}' "
                f"both bind {address}.",
            )


def _suggest(written: str) -> str:
    key = written.replace("_", "-")
    matches = difflib.get_close_matches(key, list(_KEYS), n=1)
    if not matches:
        return ""
    match = matches[0]
    if "_" in written and "-" not in written:
        match = match.replace("-", "_")
    return f" Did you mean '{match}'?"


def _show(value: object) -> str:
    """``value`` as it would be written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = (f"{_show_key(k)} = {_show(v)}" for k, v in value.items())
        return "{ " + ", ".join(items) + " }"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _show_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
