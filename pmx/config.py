"""AppConfig: the plain settings of one app.

Everything here is plain data (str, int, float, bool, dict), validated once by
``AppConfig.validate`` and then handed unchanged to the master and, as JSON, to each
worker. Parsing helpers raise :class:`ConfigError` with the offending key and a
message that quotes the value and shows the expected form; the CLI and the config file
loader add where the value came from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any

from pmx.errors import ConfigError

BALANCE_POLICIES = ("round-robin", "least-conn", "least-busy")
INTERFACES = ("auto", "asgi", "wsgi")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


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


@dataclass
class AppConfig:
    app: str
    name: str = ""
    workers: int = 1
    bind: str = "127.0.0.1:8000"
    balance: str = "least-busy"
    rebalance: bool = True  # move idle kept-alive connections (pmx.master.rebalance)
    interface: str = "auto"
    app_dir: str = ""
    env: dict[str, str] = field(default_factory=dict)
    graceful_timeout: float = 30.0
    max_boot_failures: int = 5
    log_level: str = "info"
    access_log: bool = True
    timeout_keep_alive: int = 5
    header_timeout: float = 30.0  # a request head must arrive within this; 0: no limit
    backlog: int = 2048
    proxy_headers: bool = True
    forwarded_allow_ips: str = "127.0.0.1"
    # Replacing workers: reloads, recycling (max requests / memory), health.
    ready_timeout: float = 30.0
    max_requests: int = 0  # 0: no limit
    max_requests_jitter: int = 0
    max_memory: int = 0  # bytes of RSS (children included); 0: no limit
    memory_interval: float = 1.0
    health_path: str = ""  # "": the probe is answered by the worker's event loop
    health_interval: float = 2.0
    health_timeout: float = 1.0
    health_fall: int = 3
    health_rise: int = 2
    admin: str = ""  # HOST:PORT of the master's admin endpoint; "": none
    watch: list[str] = field(default_factory=list)  # reload when these change
    # Used when the daemon runs the app (pmx start): its log files.
    log_max_size: int = 10 * 1024 * 1024
    log_backups: int = 5

    def validate(self) -> AppConfig:
        """Check every field, fill defaults that depend on others; return self."""
        check_import_string(self.app)
        if not self.name:
            self.name = self.app.partition(":")[0]
        check_name(self.name)
        self.workers = parse_workers(self.workers)
        self.bind = str(parse_bind(self.bind))
        self.balance = check_choice("balance", self.balance, BALANCE_POLICIES)
        self.interface = check_choice("interface", self.interface, INTERFACES)
        self.log_level = check_choice("log_level", self.log_level, LOG_LEVELS)
        self.graceful_timeout = parse_seconds("graceful_timeout", self.graceful_timeout)
        self.max_boot_failures = parse_positive_int("max_boot_failures", self.max_boot_failures)
        self.timeout_keep_alive = parse_positive_int("timeout_keep_alive", self.timeout_keep_alive)
        self.header_timeout = parse_seconds("header_timeout", self.header_timeout)
        self.backlog = parse_positive_int("backlog", self.backlog)
        self.ready_timeout = parse_seconds("ready_timeout", self.ready_timeout)
        self.max_requests = parse_count("max_requests", self.max_requests)
        self.max_requests_jitter = parse_count("max_requests_jitter", self.max_requests_jitter)
        off = str(self.max_memory).strip() in ("", "0")
        self.max_memory = 0 if off else parse_size("max_memory", self.max_memory)
        self.memory_interval = parse_seconds("memory_interval", self.memory_interval)
        if self.health_path and not str(self.health_path).startswith("/"):
            raise ConfigError(
                "health_path", f"'{self.health_path}' is not a path: expected it to start with '/'."
            )
        self.health_interval = parse_seconds("health_interval", self.health_interval)
        self.health_timeout = parse_seconds("health_timeout", self.health_timeout)
        self.health_fall = parse_positive_int("health_fall", self.health_fall)
        self.health_rise = parse_positive_int("health_rise", self.health_rise)
        if self.admin:
            try:
                address = parse_bind(self.admin)
            except ConfigError:
                address = BindAddress(path="-")
            if address.is_unix:
                raise ConfigError(
                    "admin", f"'{self.admin}' is not a valid admin address: expected HOST:PORT."
                ) from None
            self.admin = str(address)
        self.watch = [check_watch_path(p, self.app_dir) for p in self.watch]
        self.log_max_size = parse_size("log_max_size", self.log_max_size)
        self.log_backups = parse_count("log_backups", self.log_backups)
        if self.app_dir:
            if not os.path.isdir(self.app_dir):
                raise ConfigError("app_dir", f"'{self.app_dir}' is not a directory.")
            self.app_dir = os.path.abspath(self.app_dir)
        for key in self.env:
            check_env_key(key)
        return self

    @property
    def bind_address(self) -> BindAddress:
        return parse_bind(self.bind)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_child(self) -> dict[str, Any]:
        """The config as sent to a child process (master, worker) in its first message:
        without ``env``, whose values the child gets in its environment (``child_env``).
        A message on a SEQPACKET socket is limited to the socket's buffer (about 200
        KiB); the environment takes values of up to 128 KiB each."""
        data = self.to_dict()
        data["env"] = {}
        return data

    def child_env(self) -> dict[str, str]:
        """The environment of a child process: this one's plus ``env``."""
        return {**os.environ, **self.env}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AppConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(key, f"unknown key '{key}'.")
        return cls(**data)


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
    """``4``, ``"4"`` or ``"max"`` (one worker per CPU)."""
    text = str(value).strip()
    if text == "max":
        return os.cpu_count() or 1
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
