"""A dependency-free WSGI app: its views run in the worker's thread pool.

``/sleep?ms=N`` sleeps N milliseconds in the view, holding one of the pool's threads;
every response's body is the id of the worker that served it.
"""

import os
import time


def app(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(float(environ["QUERY_STRING"].partition("=")[2] or 1000) / 1000)
    body = os.environ.get("PMX_WORKER_ID", "").encode()
    start_response("200 OK", [("content-type", "text/plain"),
                              ("content-length", str(len(body)))])
    return [body]
