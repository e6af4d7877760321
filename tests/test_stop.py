"""How ``pmx run`` stops: graceful timeout, a second Ctrl-C, and a unix socket bind."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time

import psutil

from tests.conftest import get, group_alive, wait_for


def slow_request_in_flight(run, ms: int) -> dict:
    result: dict = {}

    def request() -> None:
        try:
            result["response"] = get(run.port, f"/slow?ms={ms}")
        except (OSError, http.client.HTTPException) as exc:
            result["error"] = exc

    threading.Thread(target=request, daemon=True).start()

    def in_worker() -> bool:
        return any(
            c.status == psutil.CONN_ESTABLISHED and c.laddr.port == run.port
            for w in run.workers()
            for c in w.net_connections("tcp")
        )

    wait_for(in_worker, 5, "the slow request to reach a worker")
    return result


def test_graceful_timeout_kills_what_remains_and_says_so(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--graceful-timeout", "1")
    run.wait_serving(2)
    result = slow_request_in_flight(run, 20_000)
    started = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    assert time.monotonic() - started < 5
    assert "(graceful timeout); sending SIGKILL" in run.log()
    wait_for(lambda: "error" in result, 5, "the killed request to fail")
    assert not group_alive(run.pid)


def test_second_sigint_stops_at_once(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "2")
    run.wait_serving(2)
    slow_request_in_flight(run, 20_000)
    run.signal(signal.SIGINT)
    wait_for(lambda: "stopping tests.apps.plain (SIGINT)" in run.log(), 5, "the stop to begin")
    started = time.monotonic()
    run.signal(signal.SIGINT)
    run.wait_exit(10)
    assert time.monotonic() - started < 3
    assert "second SIGINT: stopping now" in run.log()
    assert not group_alive(run.pid)


def test_unix_socket_bind(pmx_run, tmp_path):
    path = tmp_path / "app.sock"
    run = pmx_run("tests.apps.plain:app", "-i", "2", bind=f"unix:{path}")

    def request() -> str:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        return data.decode()

    wait_for(lambda: run.log().count(" ready in ") >= 2, 20, "workers ready")
    bodies = {wait_for(request, 5).rpartition("\r\n\r\n")[2] for _ in range(4)}
    assert bodies == {str(pid) for pid in run.worker_pids()}
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    assert not path.exists()
