"""How ``pmx run`` stops: graceful timeout, a second Ctrl-C, and a unix socket bind."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time

import psutil

from tests.conftest import Hold, get, group_alive, listen_queue, wait_for


def slow_request_in_flight(run, ms: int) -> dict:
    result: dict = {}

    def request() -> None:
        try:
            result["response"] = get(run.port, f"/slow?ms={ms}")
        except (OSError, http.client.HTTPException) as exc:
            result["error"] = exc

    threading.Thread(target=request, daemon=True).start()

    wait_for(run.holds_connections, 5, "the slow request to reach a worker")
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


def test_stop_serves_connections_still_queued_in_the_channel(pmx_run, tmp_path):
    """One worker, its loop blocked: the master hands it five more connections, which
    wait unread in its channel (least-conn: least-busy would leave them in the kernel's
    backlog). SIGTERM then; every one of them is answered."""
    run = pmx_run("tests.apps.plain:app", "-i", "1", "--balance", "least-conn")
    run.wait_serving(1)
    results: list = []

    def request(path: str) -> None:
        try:
            results.append(get(run.port, path, 30)[0])
        except (OSError, http.client.HTTPException) as exc:
            results.append(exc)

    hold = Hold(run.port, tmp_path / "block")
    threads = [threading.Thread(target=request, args=("/pid",)) for _ in range(5)]
    try:
        for thread in threads:
            thread.start()

        def all_handed_off() -> bool:
            mine = [
                c for c in psutil.Process().net_connections("tcp")
                if c.raddr and c.raddr.port == run.port and c.status == psutil.CONN_ESTABLISHED
            ]
            return len(mine) == 6 and listen_queue(run.port) == 0

        wait_for(all_handed_off, 20, "the master to accept and hand off all six connections")
        run.signal(signal.SIGTERM)
    finally:
        hold.release()
    for thread in threads:
        thread.join(30)
    assert results == [200] * 5
    assert run.wait_exit(20) == 0


def test_stop_answers_a_new_connection_whose_request_comes_late(pmx_run):
    """A connection accepted just before the stop, whose request arrives just after,
    gets its answer instead of being closed as idle."""
    run = pmx_run("tests.apps.plain:app", "-i", "1")
    run.wait_serving(1)
    sock = socket.create_connection(("127.0.0.1", run.port), timeout=10)

    wait_for(run.holds_connections, 5, "the worker to hold the connection")
    run.signal(signal.SIGTERM)
    wait_for(lambda: "Shutting down" in run.log() or "stopping" in run.log(), 5, "the stop")
    sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
    response = b""
    while chunk := sock.recv(65536):
        response += chunk
    sock.close()
    assert response.startswith(b"HTTP/1.1 200 OK"), response
    assert run.wait_exit(10) == 0
