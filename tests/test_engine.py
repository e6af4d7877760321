"""``pmx run`` end to end: real workers, real sockets, real HTTP, real signals."""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import select
import signal
import socket
import threading
import time

import psutil
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import get, group_alive, wait_for

FASTAPI = "examples.fastapi_app.main:app"


def pids_of(port: int, n: int) -> list[int]:
    return [int(get(port, "/pid")[1]) for _ in range(n)]


def test_round_robin_spreads_new_connections_evenly(pmx_run):
    run = pmx_run(FASTAPI, "-i", "4", "--balance", "round-robin")
    run.wait_serving(4)
    workers = run.worker_pids()
    assert len(workers) == 4
    counts = collections.Counter(pids_of(run.port, 400))
    assert set(counts) == workers
    assert all(97 <= c <= 103 for c in counts.values()), counts


@pytest.mark.parametrize("policy", ["round-robin", "least-busy"])
def test_keep_alive_connections_stay_on_one_worker_and_spread(pmx_run, policy):
    run = pmx_run(FASTAPI, "-i", "4", "--balance", policy)
    run.wait_serving(4)
    conns = [http.client.HTTPConnection("127.0.0.1", run.port, timeout=10) for _ in range(8)]
    seen: list[set[str]] = [set() for _ in conns]
    for _ in range(10):
        for i, conn in enumerate(conns):
            conn.request("GET", "/pid")
            seen[i].add(conn.getresponse().read().decode())
    for conn in conns:
        conn.close()
    assert all(len(s) == 1 for s in seen), seen
    per_worker = collections.Counter(next(iter(s)) for s in seen)
    assert sorted(per_worker.values()) == [2, 2, 2, 2], per_worker


def test_websocket_echo(pmx_run):
    run = pmx_run(FASTAPI, "-i", "2")
    run.wait_serving(2)
    with ws_connect(f"ws://127.0.0.1:{run.port}/ws") as ws:
        for text in ("hello", "héllo wörld", "x" * 10_000):
            ws.send(text)
            assert ws.recv(timeout=5) == text


def test_scope_client_is_the_real_peer(pmx_run):
    run = pmx_run(FASTAPI, "-i", "2")
    run.wait_serving(2)
    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
    conn.connect()
    local_port = conn.sock.getsockname()[1]
    conn.request("GET", "/client")
    body = json.loads(conn.getresponse().read())
    conn.close()
    assert body["client"] == ["127.0.0.1", local_port]


def test_a_worker_serves_with_its_startup_heap_frozen(pmx_run):
    """What a worker built up to its startup (modules, the app) is out of the garbage
    collector's sight by the time it serves, so full collections do not walk it."""
    run = pmx_run("tests.apps.plain:app", "-i", "1")
    run.wait_serving(1)
    status, frozen = get(run.port, "/gc")
    assert status == 200
    assert int(frozen) > 1000  # the plain app's worker alone holds tens of thousands


def test_a_worker_sleeps_from_one_request_to_the_next(pmx_run):
    """A worker with no request in flight sleeps until the next connection: its loop
    is not woken by the heartbeat that stamps the load slot while requests are in
    flight (1 ms). With more workers than cores every such wake-up is a context switch
    for nothing, and it was one per request."""
    run = pmx_run("tests.apps.plain:app", "-i", "1")
    run.wait_serving(1)
    worker = run.workers()[0]

    def request() -> None:
        with socket.create_connection(("127.0.0.1", run.port), timeout=10) as sock:
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            while sock.recv(65536):
                pass

    requests, wakes = 40, 0
    for _ in range(requests):
        request()
        wait_for(lambda: worker.status() == psutil.STATUS_SLEEPING, 5, "the worker to sleep")
        before = worker.num_ctx_switches().voluntary
        # The load's shape, not a wait for a state: 20 ms with no request, in which a
        # heartbeat would have woken the loop once (and the idle tick, every 100 ms,
        # does one time in five).
        time.sleep(0.02)
        wakes += worker.num_ctx_switches().voluntary - before
    assert wakes < requests * 0.6, f"{wakes} wake-ups in {requests} idle gaps"


def test_a_worker_holding_quiet_requests_slows_its_heartbeat(pmx_run):
    """Requests in flight that only await (long polls, WebSockets) keep the heartbeat
    on, but while none starts or ends it slows down to QUIET_BEAT: the loop is not
    woken a thousand times a second for nothing, and it still serves a new request."""
    run = pmx_run("tests.apps.plain:app", "-i", "1")
    run.wait_serving(1)
    worker = run.workers()[0]
    with socket.create_connection(("127.0.0.1", run.port), timeout=10) as sock:
        sock.sendall(b"GET /slow?ms=20000 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: worker.status() == psutil.STATUS_SLEEPING, 5, "the worker to sleep")
        before, started = worker.num_ctx_switches().voluntary, time.monotonic()
        # The load's shape, not a wait for a state: half a second of a quiet request,
        # in which a heartbeat at HEARTBEAT's rate would wake the loop 500 times.
        time.sleep(0.5)
        wakes = worker.num_ctx_switches().voluntary - before
        gap = time.monotonic() - started
        # At QUIET_BEAT's rate, 16 ms, and the idle tick's, 100 ms: about 36.
        assert wakes < gap / 0.001 * 0.2, f"{wakes} wake-ups in {gap:.2f} s"
        # The slowed-down loop still serves at once.
        assert get(run.port, "/pid")[0] == 200


def test_worker_env_and_ids(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--env", "GREETING=hi", "--name", "web",
                  "--balance", "round-robin")  # two requests, one per worker
    run.wait_serving(2)
    envs = [json.loads(get(run.port, "/env")[1]) for _ in range(2)]
    assert sorted(e["PMX_WORKER_ID"] for e in envs) == ["1", "2"]
    assert all(e["PYTHONUNBUFFERED"] == "1" and e["GREETING"] == "hi" for e in envs)
    titles = sorted(" ".join(p.cmdline()).strip() for p in run.workers())
    assert titles == ["pmx: worker web#1", "pmx: worker web#2"]
    master = " ".join(psutil.Process(run.pid).cmdline()).strip()
    assert master == f"pmx: master web 127.0.0.1:{run.port}"


def test_killed_worker_is_replaced_and_requests_keep_succeeding(pmx_run):
    run = pmx_run(FASTAPI, "-i", "4")
    run.wait_serving(4)
    before = run.worker_pids()
    victim = sorted(before)[0]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    new_pid: set[int] = set()

    def new_worker_serves() -> bool:
        status, body = get(run.port, "/pid")
        assert status == 200
        if int(body) not in before:
            new_pid.add(int(body))
        return bool(new_pid)

    wait_for(new_worker_serves, timeout=20, what="a replacement worker")
    replaced_in = time.monotonic() - killed_at
    # Its boot (an interpreter importing FastAPI) takes what the machine's speed allows;
    # what pmx adds to it (seeing the exit, the backoff, the first probe) must be short.
    [new] = new_pid
    booted = re.search(rf"\(pid {new}\) ready in ([\d.]+) s", run.log())
    assert booted, run.log()
    assert replaced_in - float(booted.group(1)) < 2.0
    assert victim not in set(pids_of(run.port, 40))
    assert "died (killed by SIGKILL)" in run.log()


def test_sigterm_lets_in_flight_request_finish(pmx_run):
    run = pmx_run(FASTAPI, "-i", "2")
    run.wait_serving(2)
    result: dict[str, object] = {}

    def slow_request() -> None:
        result["response"] = get(run.port, "/slow?ms=2000")

    thread = threading.Thread(target=slow_request)
    thread.start()

    wait_for(run.holds_connections, 5, "the slow request to reach a worker")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    thread.join(10)
    status, body = result["response"]  # type: ignore[misc]
    assert status == 200 and '"slept_ms":2000' in body
    assert not group_alive(run.pid)
    assert "stopping examples.fastapi_app.main (SIGTERM)" in run.log()


def test_killed_master_takes_its_workers_down(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "3")
    run.wait_serving(3)
    workers = run.workers()
    assert len(workers) == 3
    run.signal(signal.SIGKILL)
    run.wait_exit(5)

    def all_gone() -> bool:
        return not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)

    wait_for(all_gone, 5, "workers to exit after their master was killed")


def test_import_error_exits_fast_with_the_message(pmx_run):
    run = pmx_run("tests.apps.broken_import:app", "-i", "4")
    # Fast means at the first boot error, without a respawn: how long four interpreters
    # take to import the app is the machine's speed.
    code = run.wait_exit(20)
    assert code != 0
    log = run.log()
    assert (
        'Error: app "tests.apps.broken_import:app" failed to start: '
        "RuntimeError: boom: cannot import this app" in log
    )
    assert "restarting in" not in log
    assert 'broken_import.py", line 3' in log
    wait_for(lambda: not group_alive(run.pid), 5, "no process left")


def test_lifespan_failure_exits_with_the_apps_message(pmx_run):
    run = pmx_run("tests.apps.broken_lifespan:app", "-i", "2")
    assert run.wait_exit(20) != 0
    assert 'failed to start: database unreachable' in run.log()
    wait_for(lambda: not group_alive(run.pid), 5, "no process left")


def test_sigterm_to_one_worker_drains_and_replaces_it(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "2")
    run.wait_serving(2)
    before = run.worker_pids()
    victim = min(before)
    victim_proc = psutil.Process(victim)
    os.kill(victim, signal.SIGTERM)
    victim_proc.wait(5)

    wait_for(lambda: run.log().count(" ready in ") >= 3, 20, "a replacement worker")
    served = set(pids_of(run.port, 20))
    assert victim not in served and len(served) == 2
    assert "asked to stop; replacing it" in run.log()
    assert f"(pid {victim}) stopped (exit code 0)" in run.log()  # drained, not killed


@pytest.mark.parametrize("workers", [1, 2])
def test_repeated_boot_failures_mark_the_app_errored(pmx_run, tmp_path, workers):
    """With one worker or several, the app ends errored with the cause: the error of
    the last worker that could not start."""
    marker = tmp_path / "broken"
    run = pmx_run("tests.apps.flaky:app", "-i", str(workers),
                  env={"FLAKY_MARKER": str(marker)})
    run.wait_serving(workers)
    marker.touch()  # from now on the app cannot be imported
    for pid in run.worker_pids():
        os.kill(pid, signal.SIGKILL)
    assert run.wait_exit(30) == 1  # five boots, each after its backoff
    log = run.log()
    assert log.count("refusing to start") >= 5
    assert (
        'Error: app "tests.apps.flaky" errored: 5 workers in a row exited before becoming '
        "ready; last error: RuntimeError: marker present: refusing to start"
    ) in log
    assert not group_alive(run.pid)


def test_sigttin_and_sigttou_scale_by_one(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "2")
    run.wait_serving(2)
    run.signal(signal.SIGTTIN)
    wait_for(lambda: len(run.worker_pids()) == 3 and run.log().count(" ready in ") >= 3, 10,
             "a third worker")
    assert "scaling tests.apps.plain from 2 to 3 worker(s)" in run.log()
    run.signal(signal.SIGTTOU)  # one at a time: pending signals of a kind do not queue
    wait_for(lambda: len(run.worker_pids()) == 2, 10, "scaled down to two workers")
    run.signal(signal.SIGTTOU)
    wait_for(lambda: len(run.worker_pids()) == 1, 10, "scaled down to one worker")
    assert "scaling tests.apps.plain from 2 to 1 worker(s)" in run.log()
    run.signal(signal.SIGTTOU)  # never below one
    wait_for(lambda: "SIGTTOU ignored" in run.log(), 5, "the master to refuse")
    assert {int(get(run.port, "/pid")[1]) for _ in range(3)} == run.worker_pids()
    assert "scaling tests.apps.plain from 1 to" not in run.log()


def test_large_env_values_reach_the_workers(pmx_run):
    """Three 100 KB --env values: more than one message between master and worker can
    hold, so they travel in the workers' environment, not in their hello."""
    big = {f"BIG{i}": chr(ord("a") + i) * 100_000 for i in range(2)}
    greeting = "g" * 100_000
    args = [f"--env=GREETING={greeting}", *(f"--env={k}={v}" for k, v in big.items())]
    run = pmx_run("tests.apps.plain:app", "-i", "2", *args)
    run.wait_serving(2)
    env = json.loads(get(run.port, "/env")[1])
    assert env["GREETING"] == greeting


def test_a_request_head_that_never_completes_gets_408_and_is_closed(pmx_run):
    """--header-timeout 1: a client sending its head a byte at a time (slowloris) and
    one that sends nothing are answered 408 and closed; a kept-alive connection idle
    between requests is left to the keep-alive timeout."""
    run = pmx_run("tests.apps.plain:app", "-i", "1", "--header-timeout", "1",
                  "--timeout-keep-alive", "30")
    run.wait_serving(1)
    silent = socket.create_connection(("127.0.0.1", run.port), timeout=10)
    slow = socket.create_connection(("127.0.0.1", run.port), timeout=10)
    idle = socket.create_connection(("127.0.0.1", run.port), timeout=10)
    idle.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
    assert whole_response(idle).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    slow.settimeout(0.3)
    head = b"GET /pid HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100
    answer = b""
    for byte in head:  # one byte every 0.3 s at most: the head would take 30 s
        try:
            slow.sendall(bytes([byte]))
            answer = slow.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if answer:
            break
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert elapsed < 5
    silent.settimeout(10)
    assert silent.recv(4096).startswith(b"HTTP/1.1 408")
    idle.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")  # still open, still served
    assert whole_response(idle).startswith(b"HTTP/1.1 200")
    for sock in (silent, slow, idle):
        sock.close()


def whole_response(sock: socket.socket) -> bytes:
    """One response read to its last byte (head and content-length body), so that the
    next read on a kept-alive connection starts with the next response."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(4096)
    return head


@pytest.mark.parametrize("head_limit", ["32K", "0"])
def test_a_408_reaches_a_client_that_goes_on_sending_before_it_reads(pmx_run, head_limit):
    """A slow client is still sending its head when the 408 goes out, and reads only
    later: the connection is closed in stages (this side shut down; what still comes
    read and dropped, or left unread without a head limit), so what it sends meanwhile
    does not make the kernel answer with a reset that would destroy the 408 before the
    client reads it."""
    run = pmx_run("tests.apps.plain:app", "-i", "1", "--header-timeout", "1",
                  "--max-header-size", head_limit)
    run.wait_serving(1)
    slow = socket.create_connection(("127.0.0.1", run.port), timeout=10)
    slow.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n")
    # Wait, without reading, until the answer has arrived: then send more.
    wait_for(lambda: select.select([slow], [], [], 0)[0], 10, "the 408 to arrive")
    for _ in range(5):
        slow.sendall(b"X-More: b\r\n")
    answer = slow.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    slow.close()
