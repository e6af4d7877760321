"""Options shared by ``pmx run`` and ``pmx start``, and their conversion to AppConfig."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from pmx.config import BALANCE_POLICIES, INTERFACES, LOG_LEVELS, AppConfig, parse_env_item
from pmx.errors import ConfigError

# How each AppConfig key is spelled on the command line, for error messages.
PARAM_HINTS = {
    "app": "'TARGET'",
    "name": "'--name'",
    "workers": "'-i' / '--workers'",
    "bind": "'--bind'",
    "balance": "'--balance'",
    "rebalance": "'--rebalance'",
    "interface": "'--interface'",
    "app_dir": "'--app-dir'",
    "env": "'--env'",
    "graceful_timeout": "'--graceful-timeout'",
    "max_boot_failures": "'--max-boot-failures'",
    "log_level": "'--log-level'",
    "timeout_keep_alive": "'--timeout-keep-alive'",
    "header_timeout": "'--header-timeout'",
    "backlog": "'--backlog'",
    "access_log": "'--access-log'",
    "proxy_headers": "'--proxy-headers'",
    "forwarded_allow_ips": "'--forwarded-allow-ips'",
    "ready_timeout": "'--ready-timeout'",
    "max_requests": "'--max-requests'",
    "max_requests_jitter": "'--max-requests-jitter'",
    "max_memory": "'--max-memory'",
    "memory_interval": "'--memory-interval'",
    "health_path": "'--health-path'",
    "health_interval": "'--health-interval'",
    "health_timeout": "'--health-timeout'",
    "health_fall": "'--health-fall'",
    "health_rise": "'--health-rise'",
    "admin": "'--admin'",
    "watch": "'--watch'",
    "log_max_size": "'--log-max-size'",
    "log_backups": "'--log-backups'",
}

_OPTIONS = [
    click.argument("target"),
    click.option("-i", "--workers", default="1", show_default=True,
                 help="Number of worker processes, or 'max' for one per CPU."),
    click.option("--bind", "-b", default=None,
                 help="HOST:PORT or unix:PATH to listen on.  [default: 127.0.0.1:8000]"),
    click.option("--host", default=None, help="Host to listen on (with --port)."),
    click.option("--port", default=None, help="Port to listen on (with --host)."),
    click.option("--name", default="", help="App name.  [default: the module name]"),
    click.option("--balance", type=click.Choice(BALANCE_POLICIES), default="least-busy",
                 show_default=True, help="How the master picks a worker for each connection."),
    click.option("--rebalance/--no-rebalance", default=True, show_default=True,
                 help="Move idle kept-alive connections to workers that join the rotation, "
                      "and away from draining ones instead of closing them."),
    click.option("--interface", type=click.Choice(INTERFACES), default="auto", show_default=True,
                 help="App interface; auto tells ASGI from WSGI."),
    click.option("--app-dir", default="",
                 help="Directory put first on sys.path to import the app.  [default: .]"),
    click.option("--env", "-e", "env", multiple=True, metavar="KEY=VALUE",
                 help="Environment variable for the workers (repeatable)."),
    click.option("--graceful-timeout", default="30", show_default=True, metavar="SECONDS",
                 help="On stop, how long workers may take to finish before SIGKILL."),
    click.option("--max-boot-failures", default="5", show_default=True, metavar="N",
                 help="Workers in a row that may exit before becoming ready before the "
                      "app is marked errored."),
    click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True),
    click.option("--access-log/--no-access-log", default=True, show_default=True),
    click.option("--timeout-keep-alive", default="5", show_default=True, metavar="SECONDS",
                 help="Close keep-alive connections idle this long."),
    click.option("--header-timeout", default="30", show_default=True, metavar="SECONDS",
                 help="Answer 408 and close a connection whose request head has not fully "
                      "arrived this long after it began (or after the connection opened); "
                      "0: no limit."),
    click.option("--backlog", default="2048", show_default=True,
                 help="Listen backlog."),
    click.option("--proxy-headers/--no-proxy-headers", default=True, show_default=True,
                 help="Trust X-Forwarded-For/Proto from --forwarded-allow-ips."),
    click.option("--forwarded-allow-ips", default="127.0.0.1", show_default=True),
    click.option("--ready-timeout", default="30", show_default=True, metavar="SECONDS",
                 help="How long a new worker may take to become ready during a reload."),
    click.option("--max-requests", default="0", show_default=True, metavar="N",
                 help="Replace a worker after it served N requests (0: never)."),
    click.option("--max-requests-jitter", default="0", show_default=True, metavar="J",
                 help="Add 0..J to each worker's --max-requests, so they do not all recycle "
                      "at once."),
    click.option("--max-memory", default="0", show_default=True, metavar="SIZE",
                 help="Replace a worker whose RSS (children included) stays above SIZE "
                      "(K/M/G) for 3 samples (0: no limit)."),
    click.option("--memory-interval", default="1", show_default=True, metavar="SECONDS",
                 help="How often worker memory is sampled."),
    click.option("--health-path", default="", metavar="PATH",
                 help="Probe workers with GET PATH through the app (default: the worker's "
                      "event loop answers)."),
    click.option("--health-interval", default="2", show_default=True, metavar="SECONDS"),
    click.option("--health-timeout", default="1", show_default=True, metavar="SECONDS"),
    click.option("--health-fall", default="3", show_default=True, metavar="N",
                 help="Failed probes in a row that take a worker out of rotation."),
    click.option("--health-rise", default="2", show_default=True, metavar="N",
                 help="Passed probes in a row that bring it back."),
    click.option("--watch", multiple=True, is_flag=False, flag_value=".", metavar="[PATH]",
                 help="Rolling reload when a Python file under PATH changes (repeatable; "
                      "alone: the app directory)."),
    click.option("--admin", default=None, metavar="HOST:PORT",
                 help="Serve /health, /workers and /metrics here (pmx run: off; "
                      "pmx start: 127.0.0.1 on a free port)."),
]


def app_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(_OPTIONS):
        func = decorator(func)
    return func


def build_config(opts: dict[str, Any]) -> AppConfig:
    """AppConfig from parsed options; bad values become click errors that name the
    option, quote the value and say what is expected."""
    if opts.get("admin") is None:
        opts["admin"] = ""
    bind = opts.pop("bind")
    host, port = opts.pop("host"), opts.pop("port")
    if host is not None or port is not None:
        if bind is not None:
            raise click.UsageError("Use either --bind or --host/--port, not both.")
        bind = f"{host or '127.0.0.1'}:{port if port is not None else 8000}"
    try:
        env = dict(parse_env_item(item) for item in opts.pop("env"))
        opts["watch"] = list(opts.get("watch") or [])
        config = AppConfig(
            app=opts.pop("target"),
            bind=bind or "127.0.0.1:8000",
            env=env,
            **opts,
        )
        return config.validate()
    except ConfigError as exc:
        raise click.BadParameter(exc.message, param_hint=PARAM_HINTS.get(exc.key)) from None
