"""--max-header-size: a request head (request line and headers) past the limit is
answered 431 and its connection closed; bodies and kept-alive connections are not
counted against it."""

from __future__ import annotations

import select
import socket
import time

from tests.test_engine import whole_response


def _response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _head(size: int) -> bytes:
    """A GET whose head is ``size`` bytes long, padded by one header."""
    start = b"GET /pid HTTP/1.1\r\nHost: t\r\nX-Pad: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


def test_a_head_past_the_limit_gets_431_and_a_head_below_it_is_served(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "1", "--max-header-size", "8K")
    run.wait_serving(1)
    below = _connect(run.port)
    below.sendall(_head(8000))
    assert whole_response(below).startswith(b"HTTP/1.1 200")
    over = _connect(run.port)
    try:
        over.sendall(_head(64 * 1024))
    except ConnectionResetError:
        pass  # closed while the rest was still being sent: the 431 was read first
    answer = _response(over)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    # a head that never ends is cut off too: the client, still sending, reads the 431
    endless = _connect(run.port)
    endless.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n")
    deadline = time.monotonic() + 20
    answered = False
    while not answered and time.monotonic() < deadline:
        endless.sendall(b"X-More: " + b"b" * 1000 + b"\r\n")
        answered = bool(select.select([endless], [], [], 0.001)[0])
    assert answered, "no answer while the head kept growing for 20 s"
    assert _response(endless).startswith(b"HTTP/1.1 431")
    for sock in (below, over, endless):
        sock.close()


def test_bodies_and_many_requests_on_one_connection_do_not_count(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "1", "--max-header-size", "4K")
    run.wait_serving(1)
    sock = _connect(run.port)
    body = b"x" * (1 << 20)
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
                 + body)
    head = whole_response(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    for _ in range(20):  # 20 heads of 3 KB: 60 KB on one kept-alive connection
        sock.sendall(_head(3000))
        assert whole_response(sock).startswith(b"HTTP/1.1 200")
    sock.close()


def test_no_limit_with_zero(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "1", "--max-header-size", "0")
    run.wait_serving(1)
    sock = _connect(run.port)
    sock.sendall(_head(100 * 1024))
    assert whole_response(sock).startswith(b"HTTP/1.1 200")
    sock.close()
