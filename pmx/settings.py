"""What a setting is (the row type of the settings table) and the kinds of values
settings take, with their parsers.

Every setting of an app is declared once, as a field of :class:`pmx.config.AppConfig`
whose default is made by :func:`setting`: its name and default are the field's, and
the rest (its kind of value, command-line flags, help, where it is accepted, the text
of the docs) rides along in the field's metadata. Everything else is derived from that
table: the options of ``pmx run`` and ``pmx start`` (``pmx/cli/options.py``), the keys
of a ``pmx.toml`` with their type checks and "did you mean" hints
(``pmx/configfile.py``), ``AppConfig.validate``, and the settings tables of
``docs/config.md`` and ``docs/cli.md`` (``pmx/settings_docs.py``). gunicorn's
``config.py`` works the same way, with a class per setting; here a setting is a row.

A :class:`Kind` is what several settings share: how a value is parsed and checked
(the parser raises :class:`~pmx.errors.ConfigError` quoting the value and the expected
form), how it is written in TOML, and how the docs describe it.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pmx.cpus import usable_cpus
from pmx.errors import ConfigError

BALANCE_POLICIES = ("auto", "round-robin", "least-conn", "least-busy", "packed")
REBALANCE_USES = ("all", "join", "even", "drain", "gather", "off")
INTERFACES = ("auto", "asgi", "wsgi")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

# A parser takes the setting's name (the key of the ConfigError it raises), the value as
# given (a string from the command line, a TOML value, or the value already parsed),
# and the AppConfig being validated (settings are validated in field order, so the
# fields before this one hold parsed values); it returns the parsed value.
Parser = Callable[[str, Any, Any], Any]


class Scope(enum.Flag):
    """Where a setting may be given."""

    RUN = enum.auto()  # an option of pmx run
    START = enum.auto()  # an option of pmx start
    FILE = enum.auto()  # a key of an [[app]] table in pmx.toml
    ALL = RUN | START | FILE


class Toml(enum.Enum):
    """The TOML values a key takes; a value of another type is refused before parsing."""

    STRING = "string"
    NUMBER = "number"  # an integer, a float, or a string holding one
    BOOLEAN = "boolean"
    TABLE = "table"  # env: names to strings, numbers or booleans
    PATHS = "paths"  # watch: true, false, a string or an array of strings


@dataclass(frozen=True)
class Kind:
    """A kind of value: its parser and how it is written and documented."""

    parse: Parser
    toml: Toml
    expected: str  # completes "KEY: VALUE is not valid: ..." for a wrong TOML type
    toml_doc: str  # the TOML type column of docs/config.md
    type_doc: str  # the Python type of the AppConfig field, for docs/config.md
    metavar: str = ""  # the command line's placeholder, e.g. SECONDS
    choices: tuple[str, ...] = ()
    multiple: bool = False  # the option may be repeated (--env, --watch)
    bare_value: str = ""  # the value of the option given without one (--watch alone)
    from_cli: Callable[[Any], Any] | None = None  # the option's value as the field takes it


@dataclass(frozen=True)
class Setting:
    """One row of the settings table.

    ``flags`` are the command-line spellings; an error about the value names the flags
    up to the long one (``("-i", "--workers")`` gives ``'-i' / '--workers'``,
    ``("--bind", "-b")`` gives ``'--bind'``). No flags: the setting is not an option
    (``app`` is the TARGET argument). A ``bool`` setting gets a ``--no-`` form.
    """

    kind: Kind
    flags: tuple[str, ...]
    help: str  # one line for --help
    doc: str = ""  # the meaning column of docs/cli.md; default: help
    scope: Scope = Scope.ALL
    default_doc: str = ""  # the default as the docs tell it, when the value alone does not
    start_default: Any = None  # pmx start's default, when it differs from pmx run's
    metavar: str = ""  # default: the kind's
    stored: bool = True  # False for host and port, which are folded into bind
    name: str = ""  # filled from the AppConfig field
    default: Any = None  # filled from the AppConfig field
    required: bool = False  # the field has no default

    @property
    def key(self) -> str:
        """The key in pmx.toml (dash spelling)."""
        return self.name.replace("_", "-")

    @property
    def long_flag(self) -> str:
        return next((f for f in self.flags if f.startswith("--")), "")

    @property
    def param_hint(self) -> str:
        """How a command-line error names this setting."""
        if not self.flags:
            return "'TARGET'"  # the only setting without flags is the argument
        last = self.flags.index(self.long_flag)
        return " / ".join(f"'{flag}'" for flag in self.flags[: last + 1])

    @property
    def is_flag(self) -> bool:
        return self.kind.toml is Toml.BOOLEAN

    @property
    def shown_default(self) -> str:
        """The default as ``--help`` and docs/cli.md show it ("" for nothing to show)."""
        if self.default_doc:
            return self.default_doc
        value = self.default
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return f"`{value}`" if value not in ("", [], {}, None) else ""

    @property
    def shown_metavar(self) -> str:
        return self.metavar or self.kind.metavar

    def parse(self, value: Any, config: Any) -> Any:
        return self.kind.parse(self.name, value, config)


def setting(kind: Kind, *flags: str, default: Any = dataclasses.MISSING,
            default_factory: Any = dataclasses.MISSING, **row: Any) -> Any:
    """A dataclass field that is also a row of the settings table (see the module)."""
    return field(
        default=default,
        default_factory=default_factory,
        metadata={"setting": Setting(kind, flags, **row)},
    )


def settings_of(cls: type) -> tuple[Setting, ...]:
    """The rows declared by ``cls``'s fields, in field order, named after them."""
    rows = []
    for f in dataclasses.fields(cls):
        row: Setting = f.metadata["setting"]
        required = f.default is f.default_factory is dataclasses.MISSING
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        rows.append(dataclasses.replace(
            row, name=f.name, default=None if required else default, required=required
        ))
    return tuple(rows)


def extra_setting(name: str, kind: Kind, *flags: str, **row: Any) -> Setting:
    """A row without a field of its own (host and port, which make up bind)."""
    return Setting(kind, flags, name=name, stored=False, **row)


# -- values: each parser quotes the bad value and says what is expected ------------------


@dataclass(frozen=True)
class BindAddress:
    """Where the master listens: a TCP host and port, or a unix socket path."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"



def check_watch_path(value: str, app_dir: str) -> str:
    path = os.path.join(app_dir or os.getcwd(), os.path.expanduser(value))
    if not os.path.exists(path):
        raise ConfigError("watch", f"'{value}' does not exist: expected a file or directory.")
    return os.path.abspath(path)


def check_import_string(value: str) -> str:
    module, sep, attr = value.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(
            "app", f'Import string "{value}" must be in format "<module>:<attribute>".'
        )
    return value


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() also accepts '²' and friends


def check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value) or len(value) > 64:
        raise ConfigError(
            "name",
            f"'{value}' is not a valid app name: expected letters, digits, '.', '_' or '-'.",
        )
    return value


def parse_workers(value: object) -> int:
    """``4``, ``"4"`` or ``"max"`` (one worker per CPU the process may use:
    pmx.cpus)."""
    text = str(value).strip()
    if text == "max":
        return usable_cpus()
    if isinstance(value, bool) or not _DIGITS.fullmatch(text) or int(text) < 1:
        raise ConfigError(
            "workers",
            f"'{value}' is not a valid worker count: expected a whole number >= 1 or 'max'.",
        )
    return int(text)


def parse_bind(value: str) -> BindAddress:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` (all interfaces) or ``unix:PATH``."""
    text = str(value).strip()
    expected = f"'{value}' is not a valid bind address: expected HOST:PORT or unix:PATH."
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise ConfigError("bind", expected)
        return BindAddress(path=os.path.abspath(path))
    bracketed = text.startswith("[")
    if bracketed:
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not _DIGITS.fullmatch(port_text) or int(port_text) > 65535:
        raise ConfigError("bind", expected)
    if not host and not bracketed:
        host = "0.0.0.0"
    if bracketed or ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError("bind", expected) from None
    return BindAddress(host=host, port=int(port_text))


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        options = ", ".join(f"'{c}'" for c in choices)
        raise ConfigError(key, f"'{value}' is not one of {options}.")
    return value


def parse_seconds(key: str, value: object) -> float:
    try:
        seconds = float(str(value))
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 10**7:  # also rejects nan and inf
        raise ConfigError(key, f"'{value}' is not a valid duration: expected seconds >= 0.")
    return seconds


def parse_positive_int(key: str, value: object) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not _DIGITS.fullmatch(text) or int(text) < 1:
        raise ConfigError(key, f"'{value}' is not valid: expected a whole number >= 1.")
    return int(text)


def parse_count(key: str, value: object) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not _DIGITS.fullmatch(text):
        raise ConfigError(key, f"'{value}' is not valid: expected a whole number >= 0.")
    return int(text)


_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMG]?)B?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(key: str, value: object) -> int:
    """Bytes from ``300M``, ``1.5G``, ``512K`` or a plain number of bytes."""
    match = _SIZE_RE.fullmatch(str(value).strip())
    size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]) if match else 0
    if isinstance(value, bool) or size < 1:
        raise ConfigError(
            key, f"'{value}' is not a valid size: expected bytes or a number with K, M or G."
        )
    return size


_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_key(key: str) -> str:
    if not _ENV_KEY_RE.fullmatch(key):
        raise ConfigError("env", f"'{key}' is not a valid environment variable name.")
    return key


def parse_env_item(item: str) -> tuple[str, str]:
    """``KEY=VALUE`` from ``--env``."""
    key, sep, value = item.partition("=")
    if not sep:
        raise ConfigError("env", f"'{item}' is not valid: expected KEY=VALUE.")
    return check_env_key(key), value


# -- kinds: the values settings take ------------------------------------------------------


def _keyed(parse: Callable[[str, Any], Any]) -> Parser:
    return lambda key, value, _config: parse(key, value)


def _unkeyed(parse: Callable[[Any], Any]) -> Parser:
    return lambda _key, value, _config: parse(value)


def _name(key: str, value: Any, config: Any) -> str:
    return check_name(value or config.app.partition(":")[0])  # default: the module


def _bind(key: str, value: Any, config: Any) -> str:
    return str(parse_bind(value))


def _directory(key: str, value: Any, config: Any) -> str:
    if not value:
        return ""
    if not os.path.isdir(value):
        raise ConfigError(key, f"'{value}' is not a directory.")
    return os.path.abspath(value)


def _env(key: str, value: Any, config: Any) -> dict[str, str]:
    for name in value:
        check_env_key(name)
    return dict(value)


def _limit_size(key: str, value: Any, config: Any) -> int:
    return 0 if str(value).strip() in ("", "0") else parse_size(key, value)


def _url_path(key: str, value: Any, config: Any) -> str:
    if value and not str(value).startswith("/"):
        raise ConfigError(key, f"'{value}' is not a path: expected it to start with '/'.")
    return str(value)


def _admin(key: str, value: Any, config: Any) -> str:
    if not value:
        return ""
    try:
        address = parse_bind(value)
    except ConfigError:
        address = BindAddress(path="-")
    if address.is_unix:
        raise ConfigError(key, f"'{value}' is not a valid admin address: expected HOST:PORT.")
    return str(address)


def _watch(key: str, value: Any, config: Any) -> list[str]:
    return [check_watch_path(path, config.app_dir) for path in value]  # app_dir is parsed


def _as_is(key: str, value: Any, config: Any) -> Any:
    return value


def _env_items(items: Any) -> dict[str, str]:
    return dict(parse_env_item(item) for item in items)


_STRING = "expected a string."
_WHOLE = "expected a whole number."

IMPORT_STRING = Kind(_unkeyed(check_import_string), Toml.STRING, _STRING, "string", "str")
NAME = Kind(_name, Toml.STRING, _STRING, "string", "str", metavar="NAME")
TEXT = Kind(_as_is, Toml.STRING, _STRING, "string", "str")
WORKERS = Kind(
    _unkeyed(parse_workers), Toml.NUMBER, 'expected a whole number or "max".',
    'integer, or string (`"4"`, `"max"`)', "int", metavar="N|max",
)
BIND = Kind(_bind, Toml.STRING, _STRING, "string", "str", metavar="ADDRESS")
PORT_NUMBER = Kind(_as_is, Toml.NUMBER, "expected a port number.", "integer or string", "int",
            metavar="PORT")
DIRECTORY = Kind(_directory, Toml.STRING, _STRING, "string", "str", metavar="DIR")
ENV = Kind(
    _env, Toml.TABLE, 'expected a table, e.g. env = { KEY = "value" }.', "table",
    "dict[str, str]", metavar="KEY=VALUE", multiple=True, from_cli=_env_items,
)
SECONDS = Kind(
    _keyed(parse_seconds), Toml.NUMBER, "expected a number of seconds.",
    "number or string (seconds >= 0)", "float (seconds)", metavar="SECONDS",
)
WHOLE = Kind(_keyed(parse_positive_int), Toml.NUMBER, _WHOLE, "integer or string (>= 1)",
             "int", metavar="N")
COUNT = Kind(_keyed(parse_count), Toml.NUMBER, _WHOLE, "integer or string (>= 0)", "int",
             metavar="N")
SIZE = Kind(
    _keyed(parse_size), Toml.NUMBER, 'expected a number of bytes or a size like "10M".',
    'integer (bytes) or string (`"512K"`, `"10M"`, `"1.5G"`)', "int (bytes)", metavar="SIZE",
)
SIZE_OR_OFF = Kind(
    _limit_size, Toml.NUMBER, 'expected a size like "300M".',
    'integer (bytes) or string (`"300M"`, `"1.5G"`)', "int (bytes)", metavar="SIZE",
)
SWITCH = Kind(_as_is, Toml.BOOLEAN, "expected true or false.", "boolean", "bool")
URL_PATH = Kind(_url_path, Toml.STRING, _STRING, "string starting with `/`", "str",
                metavar="PATH")
ADMIN_ADDRESS = Kind(
    _admin, Toml.STRING, _STRING, 'string: `"HOST:PORT"`, `"[IPv6]:PORT"`, `":PORT"`', "str",
    metavar="HOST:PORT",
)
PATHS = Kind(
    _watch, Toml.PATHS, "expected true, a path or a list of paths.",
    "`true`, a string, or an array of strings", "list[str]", metavar="[PATH]", multiple=True,
    bare_value=".", from_cli=list,
)


def choice(choices: tuple[str, ...], metavar: str = "") -> Kind:
    """A string that must be one of ``choices``."""
    shown = ", ".join(f'`"{c}"`' for c in choices)
    return Kind(
        lambda key, value, _config: check_choice(key, value, choices), Toml.STRING, _STRING,
        f"string: {shown}", "str", metavar=metavar, choices=choices,
    )
