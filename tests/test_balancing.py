"""Balancing policies seen from outside: which worker each new connection lands on."""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import socket
import threading
import time
from collections import Counter

import psutil
import pytest

from tests.conftest import Hold, free_port, get, listen_queue, wait_for


def open_on_worker(port: int) -> tuple[http.client.HTTPConnection, str]:
    """A kept-alive connection and the id of the worker serving it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/env")
    return conn, json.loads(conn.getresponse().read())["PMX_WORKER_ID"]


@pytest.mark.parametrize("policy", ["round-robin", "least-conn"])
def test_where_connections_go_after_some_close(pmx_run, policy):
    """Four held connections, one per worker; close the last two opened. Round robin
    carries on its cycle (the first two workers again); least-conn picks the two
    workers that now have no connection. Without rebalancing: for 1.5 s after a worker
    joins, the master evens out the counts by moving a connection, which takes a turn
    of the policy, and a slow machine is still in that window when the counts differ."""
    run = pmx_run("tests.apps.plain:app", "-i", "4", "--balance", policy, "--rebalance", "off")
    run.wait_serving(4)
    held = [open_on_worker(run.port) for _ in range(4)]
    order = [worker_id for _conn, worker_id in held]
    assert sorted(order) == ["1", "2", "3", "4"]  # equal loads: one each, in turn
    for conn, _ in held[2:]:
        conn.close()
    wait_for(lambda: run.holds_connections() == 2, 5, "the workers to see two connections close")
    new = [open_on_worker(run.port) for _ in range(2)]
    expected = order[:2] if policy == "round-robin" else order[2:]
    assert sorted(w for _c, w in new) == sorted(expected)
    for conn, _ in [*held[:2], *new]:
        conn.close()


def test_least_busy_steers_around_a_blocked_worker(pmx_run, tmp_path):
    """One worker's loop is blocked in a synchronous call: least-busy sends every new
    connection to the other one, so none waits behind the blocked loop."""
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--balance", "least-busy")
    run.wait_serving(2)
    hold = Hold(run.port, tmp_path / "block")
    try:
        served = [get(run.port, "/pid", 20)[1] for _ in range(30)]  # while blocked
    finally:
        blocked = hold.release()
    assert blocked not in served
    assert len(set(served)) == 1


@pytest.mark.parametrize(("policy", "expected"), [("least-busy", [0, 0, 1]),
                                                  ("least-conn", [0, 0, 0])])
def test_a_request_for_a_path_that_blocked_holds_its_worker_from_its_start(
        pmx_run, tmp_path, policy, expected):
    """The worker learns that /hold blocks its loop (on its second block) and from then
    on says so before the app runs: the master sees a request for that path as holding
    the loop from its start, not 3 ms into the block. Each request comes on a new
    connection, so no connection carries the knowledge."""
    admin = free_port()
    run = pmx_run("tests.apps.plain:app", "-i", "1", "--balance", policy,
                  "--admin", f"127.0.0.1:{admin}")
    run.wait_serving(1)

    def worker() -> dict:
        return json.loads(get(admin, "/workers")[1])["workers"][0]

    seen = []
    for number in range(3):
        hold = Hold(run.port, tmp_path / f"hold{number}")
        seen.append(worker()["holding"])
        hold.release()
    assert seen == expected
    assert get(run.port, "/pid")[0] == 200
    assert worker()["holding"] == 0 and worker()["blocking"] == 0


def test_least_busy_holds_connections_back_while_every_loop_is_held(pmx_run, tmp_path):
    """Both workers blocked: a new connection stays in the kernel's backlog, as it would
    for workers that accept themselves, and goes to the first loop that frees, even the
    one blocked the longest (which a guess would have ruled out)."""
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--balance", "least-busy")
    run.wait_serving(2)
    first = Hold(run.port, tmp_path / "first")
    second = Hold(run.port, tmp_path / "second")
    try:
        # Both loops held: blocked for longer than least-busy's HELD_STUCK (25 ms).
        wait_for(lambda: time.monotonic() > second.started + 0.1, 5, "both blocks to last")
        sock = socket.create_connection(("127.0.0.1", run.port), timeout=20)
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        with sock:
            wait_for(lambda: listen_queue(run.port) == 1, 5, "the connection to wait")
            first_pid = first.release()
            assert read_pid(sock) == int(first_pid)  # while the second still blocks
            assert second.thread.is_alive()
    finally:
        second.release()
        first.release()


def test_least_busy_does_not_avoid_a_worker_for_a_block_that_is_over(pmx_run, tmp_path):
    """A request blocks a loop on a connection that then closes; meanwhile new
    connections go to the other worker. Once the block is over, that worker is as good
    as the other: held connections spread evenly, 4 and 4. (Avoided, it would get none.
    On a loaded machine one may stray: a worker preempted for over 3 ms right after it
    answered still shows that request in flight, and least-busy gives the next
    connection to the loop turning now, as the kernel's accept would.)"""
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--balance", "least-busy")
    run.wait_serving(2)
    hold = Hold(run.port, tmp_path / "block")  # get() closes its connection after
    try:
        wait_for(lambda: time.monotonic() > hold.started + 0.3, 5, "a long block")
        served = {get(run.port, "/pid", 20)[1] for _ in range(5)}
    finally:
        blocked = hold.release()
    assert blocked not in served
    wait_for(lambda: run.holds_connections() == 0, 5, "the blocking connection to close")
    held = [open_on_worker(run.port) for _ in range(8)]
    workers = Counter(worker_id for _conn, worker_id in held)
    for conn, _ in held:
        conn.close()
    assert sorted(workers.values()) in ([4, 4], [3, 5]), workers


def test_least_busy_passes_over_a_frozen_idle_worker(pmx_run):
    """An idle worker frozen by SIGSTOP looks like any idle worker, but its loop stops
    stamping its slot: after at most one connection, new ones go to the other worker."""
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--balance", "least-busy")
    run.wait_serving(2)
    frozen = sorted(run.worker_pids())[0]
    os.kill(frozen, signal.SIGSTOP)
    pids: list[int] = []
    waiting: list[socket.socket] = []  # not answered at once: on the frozen worker
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline or len(pids) + len(waiting) < 20:
            sock = socket.create_connection(("127.0.0.1", run.port), timeout=20)
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if poller.poll(50):  # the free worker answers at once
                pids.append(read_pid(sock))
            else:
                waiting.append(sock)
    finally:
        os.kill(frozen, signal.SIGCONT)
    pids += [read_pid(sock) for sock in waiting]
    on_frozen = pids.count(frozen)
    assert on_frozen <= 1, f"{on_frozen} of {len(pids)} connections went to the frozen worker"
    assert len(pids) >= 20


def test_least_busy_takes_back_connections_a_frozen_worker_left_unread(pmx_run):
    """A burst of new connections reaches two workers, one frozen by SIGSTOP the moment
    before, just after it served a request: nothing tells the master yet (an idle loop
    stamps its slot only every 0.1 s), and holding fewer connections it ranks first,
    so connections go to it and wait unread in its inbox. Once they have waited there
    UNREAD_STUCK, the master takes them back and the other worker serves them, while
    the frozen one stays frozen. (On a loaded machine the master may see the freeze
    before the burst and send it nothing: the round is then repeated.)"""
    admin = free_port()
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--balance", "least-busy",
                  "--admin", f"127.0.0.1:{admin}")
    run.wait_serving(2)
    anchor = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
    busy = int(request_on(anchor, "/pid"))  # kept open: that worker holds one more
    frozen = (run.worker_pids() - {busy}).pop()
    reclaimed = 0
    deadline = time.monotonic() + 60
    while not reclaimed:
        assert time.monotonic() < deadline, "no connection reached the frozen worker"
        # It serves a request (the one with fewer connections ranks first): it has
        # stamped its slot just now.
        wait_for(lambda: get(run.port, "/pid")[1] == str(frozen), 10, "the other worker")
        os.kill(frozen, signal.SIGSTOP)
        try:
            socks = ask_pids(run.port, 8, 20)
            pids = [read_pid(sock) for sock in socks]  # answered, or a timeout: it fails
            workers = json.loads(get(admin, "/workers")[1])["workers"]
        finally:
            os.kill(frozen, signal.SIGCONT)
        assert frozen not in pids
        reclaimed = {w["pid"]: w["reclaimed"] for w in workers}[frozen]
    anchor.close()


def test_connections_a_killed_worker_never_read_go_to_another(pmx_run):
    """Round robin hands every other new connection to a worker frozen by SIGSTOP; it
    is killed before it has read them. They were in its inbox, which the master holds
    too: the other worker serves them (none is reset). (A long --health-timeout: on a
    loaded machine the test may take over the default 1 s to kill it, and the master
    would take the connections back from a stalled worker first.)"""
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--balance", "round-robin",
                  "--health-timeout", "30")
    run.wait_serving(2)
    frozen = sorted(run.worker_pids())[0]
    os.kill(frozen, signal.SIGSTOP)
    socks = []
    try:
        socks += ask_pids(run.port, 6, 20)

        def handed_over() -> bool:  # all accepted, and the free worker's three answered
            readable, _, _ = select.select(socks, [], [], 0)
            return len(readable) == 3 and listen_queue(run.port) == 0

        wait_for(handed_over, 10, "the six connections to be handed over")
    finally:
        os.kill(frozen, signal.SIGKILL)
    pids = [read_pid(sock) for sock in socks]
    assert frozen not in pids
    assert len(set(pids)) == 1, pids
    assert "exited with 3 connection(s) unread" in run.log()


def test_connections_a_stalled_worker_never_read_go_to_another(pmx_run):
    """Round robin hands every other new connection to a worker frozen by SIGSTOP. Once
    its loop has not turned for a second, it is out of rotation, and the connections
    waiting unread in its inbox go with it: the other worker serves them while it stays
    frozen (none waits for it to thaw or to be killed)."""
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--balance", "round-robin",
                  "--health-timeout", "1")
    run.wait_serving(2)
    frozen = sorted(run.worker_pids())[0]
    os.kill(frozen, signal.SIGSTOP)
    try:
        socks = ask_pids(run.port, 6, 30)
        pids = [read_pid(sock) for sock in socks]  # answered, or a timeout: it fails
        log = run.log()
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert frozen not in pids
    assert len(set(pids)) == 1, pids
    # 3, unless the client was so slow that the stall was seen before the last ones
    assert re.search(r"out of rotation with [123] connection\(s\) unread", log), log


def ask_pids(port: int, count: int, timeout: float) -> list[socket.socket]:
    """``count`` new connections, each asking for the pid of its worker (then closed);
    read the answers with ``read_pid``."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        socks.append(sock)
    return socks


def read_pid(sock: socket.socket) -> int:
    with sock:
        return int(sock.makefile("rb").read().split(b"\r\n\r\n", 1)[1])


def request_on(conn: http.client.HTTPConnection, path: str) -> str:
    conn.request("GET", path)
    return conn.getresponse().read().decode()


def test_least_busy_avoids_a_worker_that_blocks_again_and_again(pmx_run):
    """A client loops on a request that blocks its worker's loop for 40 ms. Between two
    blocks that loop is free for an instant, and a blind pick would hand it a new
    connection just before the next block; least-busy remembers the stalls and keeps
    new connections on the other worker, even with a dozen idle connections held there
    (least-conn would send them all to the blocking one, round robin half).

    On a machine loaded enough, a few may stray all the same (seen: 4 of 2115 with a
    CPU hog on each core), most likely thus: a free worker that cannot get a CPU for
    over 25 ms right after it answered still shows that request in flight, stuck, so
    it ranks as held; when the blocking worker's loop turns first, it gets the
    connection, as it would under the kernel's accept. Hence a bound of 2 %, far below
    a blind pick's half."""
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--balance", "least-busy")
    run.wait_serving(2)
    blocking = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
    blocked_pid = request_on(blocking, "/pid")
    stop = threading.Event()

    blocks = [0]

    def loop_on_block() -> None:
        while not stop.is_set():
            request_on(blocking, "/block?ms=40")
            blocks[0] += 1

    looper = threading.Thread(target=loop_on_block)
    looper.start()
    held: list[http.client.HTTPConnection] = []
    try:
        # The subject is what follows once the master has seen a few blocks.
        wait_for(lambda: blocks[0] >= 5, 10, "five blocks")
        held = [open_on_worker(run.port)[0] for _ in range(12)]
        # Two seconds of blocks, and at least 20 connections however slow the machine.
        landed: list[str] = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline or len(landed) < 20:
            landed.append(get(run.port, "/pid")[1])
    finally:
        stop.set()
        looper.join(10)
        for conn in [blocking, *held]:
            conn.close()
    on_blocked = landed.count(blocked_pid)
    assert on_blocked <= max(1, len(landed) // 50), \
        f"{on_blocked} of {len(landed)} went to the blocking worker"


def test_least_busy_does_not_take_a_long_poll_for_a_stall(pmx_run):
    """A request waiting 3 s on I/O (asyncio.sleep) leaves its worker's loop free: that
    worker's heartbeat keeps it in the running, so held connections still spread over
    both workers instead of all going to the other one."""
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--balance", "least-busy")
    run.wait_serving(2)
    poller = threading.Thread(target=get, args=(run.port, "/slow?ms=3000"))
    poller.start()
    wait_for(lambda: run.holds_connections() == 1, 5, "the long poll to be held")
    held = [open_on_worker(run.port) for _ in range(8)]
    workers = {worker_id for _conn, worker_id in held}
    for conn, _ in held:
        conn.close()
    poller.join(10)
    assert len(workers) == 2, f"all 8 went to worker {workers}"


@pytest.mark.parametrize("policy", ["least-busy", "least-conn"])
def test_connections_opened_at_once_right_after_start_spread_exactly(pmx_run, policy):
    """64 keep-alive connections opened together on a fresh server (no warm-up): every
    one of the 4 workers holds 16, whatever order they are accepted in. (Their requests
    are sent once all 64 are held: a worker busy with a first request while the others
    are still being handed out may look stuck to least-busy on a loaded machine, and
    what it has not read yet then goes to the others, as it should.)"""
    run = pmx_run("tests.apps.plain:app", "-i", "4", "--balance", policy)
    run.wait_serving(4)
    wait_for(lambda: run.holds_connections() == 0, 5, "the readiness check's connection to close")
    socks = [socket.create_connection(("127.0.0.1", run.port), timeout=20) for _ in range(64)]
    try:
        wait_for(lambda: run.holds_connections() == 64, 10, "the workers to hold all 64")
        for sock in socks:
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
        pids = Counter(read_kept_alive_pid(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()
    assert sorted(pids.values()) == [16, 16, 16, 16]


def read_kept_alive_pid(sock: socket.socket) -> int:
    """The body of one response on a kept-alive connection (the app sends a length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(4096)
    return int(body)


def first_cpus(count: int) -> set[int]:
    return set(sorted(os.sched_getaffinity(0))[:count])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_packed_serves_new_connections_on_as_many_workers_as_cpus(pmx_run):
    """4 workers confined to 2 CPUs: packed hands new connections to the first two
    workers, and wakes the others only when one of those is held by its app. (Spread,
    least-busy would give each of the 4 a quarter.) On a loaded machine a worker may
    be stuck long enough to count as held now and then, hence not all 40."""
    run = pmx_run("tests.apps.plain:app", "-i", "4", "--balance", "packed",
                  cpus=first_cpus(2))
    run.wait_serving(4)
    served = Counter()
    for _ in range(40):
        conn, worker_id = open_on_worker(run.port)
        conn.close()
        served[worker_id] += 1
    assert served["1"] + served["2"] >= 30, served
    assert served["1"] and served["2"], served  # both active ones, in turn


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_packed_does_not_pack_onto_a_worker_whose_connection_blocked_lately(pmx_run):
    """4 workers on 2 CPUs. A kept-alive connection on one of the two active workers
    blocks its loop, then asks for something fast, so it is no longer marked as
    one that blocks; it has blocked lately all the same, like a connection whose
    requests take heavy-tailed times. It is that worker's only connection, and the
    other active one holds two idle ones, so by load it would get every new connection.
    They go to the two workers whose connections have not blocked instead. Rebalancing
    is off so every connection stays where it is."""
    run = pmx_run("tests.apps.plain:app", "-i", "4", "--balance", "packed",
                  "--rebalance", "off", cpus=first_cpus(2))
    run.wait_serving(4)
    tail, tailed = open_on_worker(run.port)
    assert tailed in ("1", "2"), tailed  # an active worker
    other = "2" if tailed == "1" else "1"
    opened = [(tail, tailed)]
    for _ in range(20):  # two idle ones on the other active worker, only those
        conn, worker_id = open_on_worker(run.port)
        if worker_id == other:
            opened.append((conn, worker_id))
        else:
            conn.close()
        if len(opened) == 3:
            break
    assert len(opened) == 3, opened
    wait_for(lambda: run.holds_connections() == 3, 5, "only the three to stay open")
    for _ in range(2):  # a connection is judged on its second blocking request
        request_on(tail, "/block?ms=40")
    request_on(tail, "/pid")  # fast: its mark goes, its recent blocks stay
    served = Counter()
    try:
        # Well within the 5 s a block is remembered, however slow the machine.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and sum(served.values()) < 30:
            conn, worker_id = open_on_worker(run.port)
            conn.close()
            served[worker_id] += 1
    finally:
        for conn, _worker_id in opened:
            conn.close()
    assert sum(served.values()) >= 10, served
    assert served[tailed] <= sum(served.values()) // 10, served


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_the_default_packs_only_while_workers_outnumber_cpus(pmx_run):
    """No --balance (auto), 2 CPUs: with 2 workers, new connections are spread over
    both; scaled to 3, past the CPUs, they go to two of them and the third is woken
    only when one of those is held (now and then on a loaded machine, hence not all);
    back to 2, spread again."""
    run = pmx_run("tests.apps.plain:app", "-i", "2", cpus=first_cpus(2))
    run.wait_serving(2)
    assert "(auto: least-busy, 2 worker(s) on 2 CPU(s);" in run.log(), run.log()

    def serving(count: int) -> Counter:
        served = Counter()
        for _ in range(count):
            conn, worker_id = open_on_worker(run.port)
            conn.close()
            served[worker_id] += 1
        return served

    served = serving(20)
    assert served["1"] >= 5 and served["2"] >= 5, served
    run.signal(signal.SIGTTIN)
    run.wait_serving(3)
    served = serving(40)
    assert served["1"] + served["2"] >= 30, served
    run.signal(signal.SIGTTOU)
    wait_for(lambda: len(run.workers()) == 2, 20, "the third worker to stop")
    served = serving(20)
    assert min(served.values()) >= 5 and len(served) == 2, served


def threads_taken(admin: int) -> dict[str, int]:
    """Threads of each worker's pool taken, as the master sees them (their load slots)."""
    status, text = get(admin, "/metrics")
    assert status == 200
    return {re.search(r'worker="(\d+)"', line).group(1): int(float(line.rpartition(" ")[2]))
            for line in text.splitlines() if line.startswith("pmx_worker_threads_taken{")}


def sleep_in_turn(port: int, admin: int, count: int) -> tuple[dict[str, int], Counter]:
    """``count`` requests whose views sleep 8 s in a thread, each sent once the master
    sees a thread taken for every one before it; the threads each worker has taken
    then, and the workers that served them."""
    conns = []
    try:
        for sent in range(1, count + 1):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conns.append(conn)
            conn.request("GET", "/sleep?ms=8000")
            wait_for(lambda sent=sent: sum(threads_taken(admin).values()) >= sent, 10,
                     f"{sent} threads taken")
        taken = threads_taken(admin)
        return taken, Counter(conn.getresponse().read().decode() for conn in conns)
    finally:
        for conn in conns:
            conn.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_packed_wakes_a_spare_worker_when_no_thread_is_free(pmx_run):
    """A WSGI app (10 threads per worker), 4 workers confined to 2 CPUs: 30 requests
    whose views sleep, all in flight at once. A worker whose 10 threads are busy is
    passed over for a spare one, so no request waits for a thread while another worker
    has one free (without this, the two active workers would get 15 each). Each request
    is sent once the master sees the one before take a thread."""
    admin = free_port()
    run = pmx_run("tests.apps.wsgi_sleep:app", "-i", "4", "--balance", "packed",
                  "--admin", f"127.0.0.1:{admin}", cpus=first_cpus(2))
    run.wait_serving(4)
    taken, served = sleep_in_turn(run.port, admin, 30)
    assert max(taken.values()) == 10, taken
    assert sum(served.values()) == 30
    assert max(served.values()) == 10 and len(served) >= 3, served


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_the_default_wakes_a_spare_worker_when_no_anyio_thread_is_free(pmx_run):
    """An ASGI app whose synchronous view runs in anyio's pool, shrunk to 4 threads at
    startup; 4 workers on 2 CPUs, so the default packs. 12 sleeping requests, each sent
    once the master sees the one before take a thread: the event loops stay free, yet
    no worker gets a fifth while another has a thread free (without counting the pool's
    threads, the two active workers would get 6 each, two waiting for a thread)."""
    admin = free_port()
    run = pmx_run("tests.apps.sync_views:app", "-i", "4", "--admin", f"127.0.0.1:{admin}",
                  cpus=first_cpus(2))
    run.wait_serving(4)
    taken, served = sleep_in_turn(run.port, admin, 12)
    assert max(taken.values()) == 4, taken
    assert sum(served.values()) == 12
    assert max(served.values()) == 4 and len(served) >= 3, served


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_packed_replaces_a_held_worker_with_the_next_one(pmx_run, tmp_path):
    """One of the two active workers is blocked in a synchronous call: the next worker
    takes its place, so new connections go to two workers that run, never to the blocked
    one, and never to the fourth (not needed while two others turn)."""
    run = pmx_run("tests.apps.plain:app", "-i", "4", "--balance", "packed",
                  cpus=first_cpus(2))
    run.wait_serving(4)
    hold = Hold(run.port, tmp_path / "block")
    try:
        # Held, not merely stuck (a CPU wait): its loop has been stuck for HELD_STUCK.
        wait_for(lambda: time.monotonic() > hold.started + 0.05, 5, "the block to last")
        served = Counter(open_on_worker(run.port)[1] for _ in range(30))
    finally:
        blocked = hold.release()
    # Its id from its title ("pmx: worker NAME#ID").
    blocked_id = " ".join(psutil.Process(int(blocked)).cmdline()).rpartition("#")[2].strip()
    assert blocked_id in ("1", "2")
    assert blocked_id not in served
    assert "3" in served and "4" not in served, served
