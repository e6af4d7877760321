"""How ``pmx run`` stops: graceful timeout, a second Ctrl-C, and a unix socket bind."""

from __future__ import annotations

import http.client
import select
import signal
import socket
import threading
import time

import psutil
import pytest

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


def test_a_stop_during_a_recycle_leaves_no_task_pending(pmx_run, tmp_path):
    """SIGTERM while a worker's replacement is still booting: the replacement is
    cancelled and awaited, not destroyed pending with the loop."""
    flag = tmp_path / "slow"
    run = pmx_run("tests.apps.slowstart:app", "-i", "1", "--max-requests", "5",
                  "--max-requests-jitter", "0", env={"SLOW_START_FLAG": str(flag)})
    run.wait_serving(1)
    flag.touch()  # from now on a worker boots slowly
    for _ in range(6):
        get(run.port, "/pid")
    wait_for(lambda: "replacing worker #1" in run.log(), 10, "the recycle to start")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(20) == 0
    assert "Task was destroyed" not in run.log()
    assert "Traceback" not in run.log()


def test_a_master_at_its_fd_limit_pauses_accepting_instead_of_spinning(pmx_run):
    """With no fd left for the master, accept() fails with EMFILE while the connections
    wait in the backlog. The master pauses instead of retrying in a loop, says so once,
    and serves them as soon as it can open fds again."""

    run = pmx_run("tests.apps.plain:app", "-i", "1")
    run.wait_serving(1)
    master = psutil.Process(run.pid)
    _soft, hard = master.rlimit(psutil.RLIMIT_NOFILE)
    master.rlimit(psutil.RLIMIT_NOFILE, (master.num_fds(), hard))
    socks = [socket.create_connection(("127.0.0.1", run.port), timeout=20) for _ in range(3)]
    try:
        for sock in socks:
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        wait_for(lambda: "accept failed" in run.log(), 10, "the first failed accept")
        before, started = master.cpu_times(), time.monotonic()
        wait_for(lambda: time.monotonic() - started > 1.0, 5, "a second of measurement")
        after = master.cpu_times()
        busy = (after.user + after.system) - (before.user + before.system)
        assert busy < 0.3, f"the master spent {busy:.2f} s of CPU in 1 s"
        assert run.log().count("accept failed") == 1
        master.rlimit(psutil.RLIMIT_NOFILE, (hard, hard))
        for sock in socks:
            assert sock.makefile("rb").readline().startswith(b"HTTP/1.1 200")
        wait_for(lambda: "accepting again after" in run.log(), 10, "the recovery to be logged")
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("policy", ["least-busy", "round-robin"])
def test_workers_at_their_fd_limit_take_no_more_and_lose_none(pmx_run, policy):
    """Limit of 200 open files for the whole app, 300 connections held open: each
    worker takes what its fd budget allows (its limit, less what it had open, less a
    reserve), then says it is full; the rest wait in the backlog, none is reset, and
    they are served as soon as connections close."""
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--balance", policy,
                  "--health-interval", "0.2",  # probes must not re-admit it
                  "--timeout-keep-alive", "120",  # nor closing the first ones, if slow
                  nofile=200)
    run.wait_serving(2)
    answered: list[socket.socket] = []
    waiting: list[socket.socket] = []

    def both_full() -> bool:
        return run.log().count("taking no new connection") == 2

    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", run.port), timeout=20)
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            # Not answered yet counts as waiting only once both workers are full: a
            # slow machine may take its time to answer before that.
            wait_for(lambda p=poller: p.poll(0) or both_full() or p.poll(100), 20,
                     "an answer, or both workers full")
            (answered if poller.poll(20) else waiting).append(sock)
        assert run.log().count("taking no new connection") == 2  # each worker, once
        assert 150 < len(answered) < 300 and waiting
        for sock in answered:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # none reset
        for sock in answered[: len(waiting) + 10]:
            sock.close()
        for sock in waiting:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert "lost" not in run.log()
    finally:
        for sock in answered + waiting:
            sock.close()
