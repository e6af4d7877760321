"""The WSGI app of the benchmark's WSGI family: a plain WSGI callable, no framework.

Routes (GET):

- ``/fast``: a tiny response.
- ``/slow``: ``time.sleep(0.05)`` in the view. Under an ASGI server the view runs in the
  WSGI adapter's thread pool, so the event loop stays free while the pool has a thread
  left; once every thread is taken, even /fast waits for one.

Every server serves it through the same adapter, a2wsgi's ``WSGIMiddleware`` with its
defaults (10 threads per worker): ``asgi`` below for uvicorn, gunicorn + UvicornWorker and
granian; pmx is given ``app`` itself, which it recognises as WSGI and wraps in that same
middleware with the same defaults. Responses carry ``x-pid`` and echo ``x-echo`` like
bench/app.py's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from a2wsgi import WSGIMiddleware
from a2wsgi.wsgi_typing import Environ, StartResponse

SLOW_SECONDS = 0.050


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    status = "200 OK"
    if path == "/fast":
        body = b"ok"
    elif path == "/slow":
        time.sleep(SLOW_SECONDS)
        body = b"slow"
    else:
        status = "404 Not Found"
        body = b"not found"
    headers = [
        ("content-type", "text/plain"),
        ("content-length", str(len(body))),
        ("x-pid", str(os.getpid())),
    ]
    echo = environ.get("HTTP_X_ECHO")
    if echo is not None:
        headers.append(("x-echo", str(echo)))
    start_response(status, headers)
    return [body]


asgi = WSGIMiddleware(app)
