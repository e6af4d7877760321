"""Import the user's app and decide whether it speaks ASGI or WSGI."""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

from uvicorn.importer import ImportFromStringError, import_from_string

from pmx.config import AppConfig
from pmx.worker.pool import WSGI_THREADS


class AppLoadError(Exception):
    """The app could not be imported or is not a web app; the message says why."""


def load(config: AppConfig) -> tuple[Any, str]:
    """Import ``config.app``; return the ASGI callable to serve and the interface used.

    WSGI apps come back wrapped in a2wsgi's ``WSGIMiddleware``.
    """
    app_dir = config.app_dir or os.getcwd()
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        app = import_from_string(config.app)
    except ImportFromStringError as exc:
        raise AppLoadError(str(exc)) from None
    if not callable(app):
        raise AppLoadError(f'"{config.app}" is not callable: expected an ASGI or WSGI app.')
    interface = config.interface
    if interface == "auto":
        interface = detect_interface(app)
    if interface == "wsgi":
        from a2wsgi import WSGIMiddleware

        return WSGIMiddleware(app, workers=WSGI_THREADS), "wsgi"
    return app, "asgi"


def detect_interface(app: Any) -> str:
    """ASGI is a coroutine callable of (scope, receive, send); WSGI a callable of
    (environ, start_response). Anything else is served as ASGI (ASGI 2 included)."""
    is_function = inspect.isfunction(app) or inspect.ismethod(app)
    call = app if is_function else app.__call__  # bound: `self` is not a parameter
    if inspect.iscoroutinefunction(call):
        return "asgi"
    try:
        params = [
            p
            for p in inspect.signature(call).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return "asgi"
    return "wsgi" if len(params) == 2 else "asgi"
