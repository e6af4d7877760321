"""Typed exceptions. The library raises these; only the CLI prints and exits."""

from __future__ import annotations


class PmxError(Exception):
    """Base class of every error pmx reports to a user."""


class ConfigError(PmxError):
    """A configuration value is invalid.

    ``key`` names the setting (``workers``, ``bind``...) so the caller can say where the
    value came from (a CLI option, a key of a config file); ``message`` quotes the bad
    value and says what is expected.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class BindError(PmxError):
    """The listening socket could not be created."""


class BootError(PmxError):
    """No worker could boot: the app failed to import or its lifespan startup failed.

    ``detail`` holds the tail of the worker's traceback, if there was one.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class AppErrored(PmxError):
    """Workers kept failing before becoming ready; the app was given up on."""
