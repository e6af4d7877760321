"""AppConfig: the plain settings of one app, and the table that declares them.

Each field of :class:`AppConfig` is one setting, declared once with
:func:`~pmx.settings.setting`: its type and default are the field's, the rest (the
kind of value and its parser, the command-line flags and help, where it is accepted,
the text of the docs) is the row. The command line, the config file loader, the
validation and the settings tables of the docs are all built from ``SETTINGS``; see
``pmx/settings.py``. Adding a setting is adding a field here, then using it.

Everything here is plain data (str, int, float, bool, dict, list), validated once by
``AppConfig.validate`` and then handed unchanged to the master and, as JSON, to each
worker. Parsers raise :class:`ConfigError` with the offending key and a message that
quotes the value and shows the expected form; the CLI and the config file loader add
where the value came from.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from pmx.errors import ConfigError
from pmx.settings import (
    ADMIN_ADDRESS,
    BALANCE_POLICIES,
    BIND,
    COUNT,
    DIRECTORY,
    ENV,
    IMPORT_STRING,
    INTERFACES,
    LOG_LEVELS,
    NAME,
    PATHS,
    PORT_NUMBER,
    REBALANCE_USES,
    SECONDS,
    SIZE,
    SIZE_OR_OFF,
    SWITCH,
    TEXT,
    URL_PATH,
    WHOLE,
    WORKERS,
    BindAddress,
    Scope,
    Setting,
    check_choice,
    check_env_key,
    check_import_string,
    check_name,
    check_watch_path,
    choice,
    extra_setting,
    parse_bind,
    parse_count,
    parse_env_item,
    parse_positive_int,
    parse_seconds,
    parse_size,
    parse_workers,
    setting,
    settings_of,
)

__all__ = [
    "BALANCE_POLICIES", "REBALANCE_USES", "INTERFACES", "LOG_LEVELS", "SETTINGS", "OPTIONS",
    "AppConfig",
    "BindAddress", "check_choice", "check_env_key", "check_import_string", "check_name",
    "check_watch_path", "parse_bind", "parse_count", "parse_env_item", "parse_positive_int",
    "parse_seconds", "parse_size", "parse_workers",
]

_DAEMON_ONLY = Scope.START | Scope.FILE


@dataclass
class AppConfig:
    app: str = setting(
        IMPORT_STRING,
        help="The app: module:attribute.",
        doc="The app, as `module:attribute`: the command line's TARGET.",
        default_doc="required",
    )
    name: str = setting(
        NAME, "--name", default="",
        help="App name, used in log lines and process titles.",
        doc="App name, used in log lines and process titles. Letters, digits, `.`, `_`, "
            "`-`; starts with a letter or digit; at most 64 characters.",
        default_doc="module part of TARGET (of `app` in a file)",
    )
    workers: int = setting(
        WORKERS, "-i", "--workers", default=1,
        help="Number of worker processes, or 'max' for one per CPU.",
        doc="Number of worker processes: a whole number >= 1, or `max` for one per CPU "
            "the process may use (its affinity mask, capped by its cgroup's CPU quota: "
            "`docker --cpus`, a Kubernetes CPU limit).",
    )
    bind: str = setting(
        BIND, "--bind", "-b", default="127.0.0.1:8000",
        help="HOST:PORT or unix:PATH to listen on.",
        doc="Where the master listens; [forms below](#--bind-forms).",
    )
    balance: str = setting(
        choice(BALANCE_POLICIES), "--balance", default="auto",
        help="How the master picks a worker for each connection.",
        doc="How the master picks a worker for each connection. `auto`: `packed` while "
            "the app has more workers than the CPUs they may use, `least-busy` otherwise. "
            "`round-robin`: each ready worker in turn. `least-conn`: the one with the "
            "fewest open connections. `least-busy`: a worker whose event loop turns now, "
            "then one whose loop is stuck only briefly, then one holding a kept-alive "
            "connection whose requests block its loop, never one held by the app "
            "(blocked for 25 ms, or serving a request for a path that blocked last time) "
            "while another can take it; among equals the fewest open connections, then "
            "the fewest requests in flight (ties go round robin). `packed`: least-busy, "
            "but new connections go to as many workers as there are CPUs (those not held "
            "by the app, nor holding a connection that blocked their loop in the last 5 "
            "seconds, nor with every thread of their app's pool busy) before any other. "
            "See [architecture.md](architecture.md#balancing).",
    )
    rebalance: str = setting(
        choice(REBALANCE_USES), "--rebalance", default="all",
        help="Move idle kept-alive connections between workers: to a worker joining the "
             "rotation (join), from workers left holding more than their share (even), "
             "from a draining one instead of closing them (drain), those that block the "
             "loop onto fewer workers (gather), all four (all) or never (off).",
        doc="Move idle kept-alive connections between workers. `join`: when a worker "
            "joins the rotation (scale-up, a respawn) the busiest workers hand it their "
            "excess. `even`: when the same workers hold more than an even share of the "
            "kept-alive connections at two looks a second apart while no loop is blocked "
            "(a pool opened while a loop was stuck), they hand the excess on (not while "
            "packing: `packed`, or `auto` with more workers than CPUs). `drain`: a "
            "draining worker (reload, recycling, scale-down) hands its connections on "
            "instead of closing them. `gather` (with `auto`, `least-busy` or `packed`): "
            "connections whose requests have blocked the event loop (every time, or now "
            "and then) are gathered on at most half the workers, leaving the other loops "
            "free, while more clients gain from it than lose. `all`: all "
            "four; `off`: each connection stays on its first worker. See "
            "[architecture.md](architecture.md#moving-kept-alive-connections-rebalancing).",
    )
    interface: str = setting(
        choice(INTERFACES), "--interface", default="auto",
        help="App interface; auto tells ASGI from WSGI.",
        doc="How to serve the app; `wsgi` wraps it in a2wsgi's `WSGIMiddleware`.",
    )
    app_dir: str = setting(
        DIRECTORY, "--app-dir", default="",
        help="Directory put first on sys.path to import the app.",
        doc="Directory put first on `sys.path` in each worker before importing TARGET. "
            "Must exist.",
        default_doc="current directory; in a config file, the file's directory",
    )
    env: dict[str, str] = setting(
        ENV, "--env", "-e", default_factory=dict,
        help="Environment variable for the workers (repeatable).",
        doc="Environment variable for the workers; repeatable. The value may contain `=`. "
            "The workers also inherit the master's environment, and get `PMX_WORKER_ID` "
            "(1..N) and `PYTHONUNBUFFERED=1`.",
    )
    graceful_timeout: float = setting(
        SECONDS, "--graceful-timeout", default=30.0,
        help="On stop, how long workers may take to finish before SIGKILL.",
        doc="On stop, how long workers may take to finish before the master sends them "
            "SIGKILL. Seconds >= 0, fractions allowed; `0` kills at once. A worker drained "
            "while the app runs (reload, recycling, scale-down, SIGTERM from outside) gets "
            "SIGKILL if it is still running this long after its drain began.",
    )
    max_boot_failures: int = setting(
        WHOLE, "--max-boot-failures", default=5,
        help="Workers in a row that may exit before becoming ready before the app is "
             "marked errored.",
        doc="Workers in a row that may exit before becoming ready before the app is "
            "marked errored. Before any worker has been ready, `pmx run` gives up (exit 1) "
            "after this many such exits, or at once when a worker reports a boot error "
            "(import error, lifespan startup failure).",
    )
    log_level: str = setting(
        choice(LOG_LEVELS, metavar="LEVEL"), "--log-level", default="info",
        help="Log level of the workers (uvicorn) and the master.",
        doc="`critical`, `error`, `warning`, `info`, `debug`, `trace`: uvicorn's log level "
            "in the workers, and the level of the master's own lines (`trace` counts as "
            "`debug` there).",
    )
    access_log: bool = setting(
        SWITCH, "--access-log", default=True,
        help="uvicorn's access log in the workers.",
    )
    timeout_keep_alive: int = setting(
        WHOLE, "--timeout-keep-alive", default=5, metavar="SECONDS",
        help="Close keep-alive connections idle this long.",
        doc="Close keep-alive connections idle this long (whole number >= 1). A draining "
            "worker (stop, reload, recycling, scale-down) first lets its connections end on "
            "their own for this long plus 0.5 s (see "
            "[architecture.md](architecture.md#draining-and-keep-alive-connections)).",
    )
    header_timeout: float = setting(
        SECONDS, "--header-timeout", default=30.0,
        help="Answer 408 and close a connection whose request head has not fully arrived "
             "this long after it began (or after the connection opened); 0: no limit.",
        doc="Answer `408 Request Timeout` and close a connection whose request head has not "
            "fully arrived this long after it began, or after the connection opened if it "
            "sent nothing (a client sending its head a byte at a time would otherwise hold "
            "its connection, and a drain, for ever). Checked once a second; seconds >= 0, "
            "`0`: no limit. A kept-alive connection idle between requests is closed by "
            "`--timeout-keep-alive` instead.",
    )
    max_header_size: int = setting(
        SIZE_OR_OFF, "--max-header-size", default=32 * 1024,
        help="Answer 431 and close a connection whose request head (request line and "
             "headers) grows past SIZE (K/M); 0: no limit.",
        doc="Answer `431 Request Header Fields Too Large` and close a connection whose "
            "request head (request line and headers) grows past this many bytes, or a "
            "number with `K` or `M`. Request bodies are not counted. `0`: no limit.",
        default_doc="`32K`",
    )
    backlog: int = setting(
        WHOLE, "--backlog", default=2048,
        help="Listen backlog.",
        doc="Listen backlog of the master's socket (the kernel may cap it, e.g. "
            "`net.core.somaxconn`).",
    )
    proxy_headers: bool = setting(
        SWITCH, "--proxy-headers", default=True,
        help="Trust X-Forwarded-For/Proto from --forwarded-allow-ips.",
        doc="Trust `X-Forwarded-For` and `X-Forwarded-Proto` from peers in "
            "`--forwarded-allow-ips` (uvicorn's proxy-headers middleware).",
    )
    forwarded_allow_ips: str = setting(
        TEXT, "--forwarded-allow-ips", default="127.0.0.1", metavar="IPS",
        help="IPs or networks trusted with --proxy-headers, comma-separated; '*': any.",
        doc="Comma-separated IPs or networks to trust, or `*` for any peer. Over a unix "
            "socket the peer has no address, so only `*` makes the headers trusted there.",
    )
    # Replacing workers: reloads, recycling (max requests / memory), health.
    ready_timeout: float = setting(
        SECONDS, "--ready-timeout", default=30.0,
        help="How long a new worker may take to become ready during a reload.",
        doc="How long a replacement worker (reload, recycling) may take to become ready and "
            "pass its first health probe. Past it, the reload or recycling fails and the old "
            "worker keeps serving; a new worker still starting is killed. Seconds >= 0.",
    )
    max_requests: int = setting(
        COUNT, "--max-requests", default=0,
        help="Replace a worker after it served N requests (0: never).",
        doc="Replace a worker, new one first, once it has served N requests. `0`: never. "
            "See [Recycling](#recycling-workers).",
    )
    max_requests_jitter: int = setting(
        COUNT, "--max-requests-jitter", default=0, metavar="J",
        help="Add 0..J to each worker's --max-requests, so they do not all recycle at once.",
        doc="Add a random 0..J to each worker's `--max-requests`, drawn when the worker "
            "starts, so that workers started together are not all replaced at once.",
    )
    max_memory: int = setting(
        SIZE_OR_OFF, "--max-memory", default=0,
        help="Replace a worker whose RSS (children included) stays above SIZE (K/M/G) for "
             "3 samples (0: no limit).",
        doc="Replace a worker whose resident memory, its child processes included, is above "
            "SIZE in 3 samples in a row. Bytes, or a number with `K`, `M` or `G` (base "
            "1024). `0`: no limit.",
        default_doc="`0` (no limit)",
    )
    memory_interval: float = setting(
        SECONDS, "--memory-interval", default=1.0,
        help="How often worker memory is sampled.",
        doc="How often each worker's memory is sampled (only with `--max-memory`).",
    )
    health_path: str = setting(
        URL_PATH, "--health-path", default="",
        help="Probe workers with GET PATH through the app.",
        doc="Probe workers with a `GET PATH` through the app; 2xx and 3xx are healthy. Must "
            "start with `/`; may have a query string. Without it, a probe checks that the "
            "worker's event loop answers. See [Health checks](#health-checks).",
        default_doc="none: the worker's event loop answers",
    )
    health_interval: float = setting(
        SECONDS, "--health-interval", default=2.0,
        help="Time between two probes of a worker.",
    )
    health_timeout: float = setting(
        SECONDS, "--health-timeout", default=1.0,
        help="A probe not answered within this time fails.",
    )
    health_fall: int = setting(
        WHOLE, "--health-fall", default=3,
        help="Failed probes in a row that take a worker out of rotation.",
        doc="Failed probes in a row that take a worker out of rotation (whole number >= 1). "
            "A worker that fails 2×N probes in a row is replaced.",
    )
    health_rise: int = setting(
        WHOLE, "--health-rise", default=2,
        help="Passed probes in a row that bring it back.",
        doc="Passed probes in a row that bring a worker out of rotation back (whole number "
            ">= 1).",
    )
    admin: str = setting(
        ADMIN_ADDRESS, "--admin", default="", start_default="127.0.0.1:0",
        help="Serve /health, /workers and /metrics here; '': off.",
        doc="Serve the [admin endpoint](#the-admin-endpoint) (`/health`, `/workers`, "
            "`/metrics`) on this address, separate from the app's port. `HOST:PORT`, "
            "`[IPv6]:PORT` or `:PORT`; port `0` picks a free port; `''` turns it off.",
        default_doc="`pmx run`: off; `pmx start`: `127.0.0.1:0`",
    )
    watch: list[str] = setting(
        PATHS, "--watch", default_factory=list,
        help="Rolling reload when a Python file under PATH changes (repeatable; alone: the "
             "app directory).",
        doc="Rolling reload when a Python file under PATH changes. Repeatable; alone, the "
            "app directory. See [Watching files](#watching-files---watch).",
        default_doc="off",
    )
    # Used when the daemon runs the app (pmx start): its log files.
    log_max_size: int = setting(
        SIZE, "--log-max-size", default=10 * 1024 * 1024, scope=_DAEMON_ONLY,
        help="Rotate an app's log file when it reaches this size (K/M/G).",
        doc="Rotate each of the app's log files before a line would take it past this size. "
            "Bytes, or a number with `K`, `M` or `G` (base 1024; fractions such as `1.5G` "
            "allowed).",
        default_doc="`10M`",
    )
    log_backups: int = setting(
        COUNT, "--log-backups", default=5, scope=_DAEMON_ONLY,
        help="Rotated log files kept per log.",
        doc="Rotated files kept per log file (`NAME.out.log.1` ... `.N`; older ones are "
            "deleted). `0` keeps none.",
    )

    def validate(self) -> AppConfig:
        """Check every field in order, fill defaults that depend on others; return self."""
        for row in SETTINGS:
            setattr(self, row.name, row.parse(getattr(self, row.name), self))
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


# The fields of AppConfig, in order: what validate() checks and describe shows.
SETTINGS: tuple[Setting, ...] = settings_of(AppConfig)

# host and port are another way to give bind, on the command line and in a file.
HOST = extra_setting(
    "host", TEXT, "--host", metavar="HOST",
    help="Host to listen on (with --port).",
    doc="Host to listen on. With `--host` and/or `--port` the address is `HOST:PORT`, the "
        "missing one defaulting to `127.0.0.1` or `8000`. Cannot be combined with `--bind`.",
    default_doc="`127.0.0.1` when only the port is given",
)
PORT = extra_setting(
    "port", PORT_NUMBER, "--port",
    help="Port to listen on (with --host).",
    doc="Port to listen on; see `--host`.",
    default_doc="`8000` when only the host is given",
)

# Every setting as the command line and the config file show them: host and port
# after bind.
OPTIONS: tuple[Setting, ...] = tuple(
    row for s in SETTINGS for row in ((s, HOST, PORT) if s.name == "bind" else (s,))
)
