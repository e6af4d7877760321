"""--interface auto: telling ASGI apps from WSGI apps by their call signature."""

from __future__ import annotations

import pytest

from pmx.worker.app import detect_interface


async def asgi_function(scope, receive, send): ...


def wsgi_function(environ, start_response): ...


class AsgiInstance:
    async def __call__(self, scope, receive, send): ...


class WsgiInstance:
    def __call__(self, environ, start_response): ...


class Asgi2App:
    def __init__(self, scope): ...

    async def __call__(self, receive, send): ...


def django_wsgi():
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure()
        django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    return WSGIHandler()


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        (asgi_function, "asgi"),
        (wsgi_function, "wsgi"),
        (AsgiInstance(), "asgi"),
        (WsgiInstance(), "wsgi"),
        (Asgi2App, "asgi"),
        (lambda environ, start_response: None, "wsgi"),
    ],
)
def test_detect_interface(app, expected):
    assert detect_interface(app) == expected


def test_django_wsgi_handler_is_wsgi():
    assert detect_interface(django_wsgi()) == "wsgi"
