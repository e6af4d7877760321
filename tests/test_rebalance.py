"""Kept-alive connections that move (``--rebalance``), with real workers and a raw-socket
client holding N connections: after a scale-up they spread over the new workers, through
a reload or a scale-down they are handed on instead of closed, and no request is lost or
answered twice on the way."""

from __future__ import annotations

import collections
import http.client
import json
import re
import signal
import socket
import threading
import time

import pytest

from pmx.master.rebalance import WINDOW
from tests.conftest import Hold, SteadyLoad, established, free_port, get, wait_for

GET = b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n"


class Pool:
    """N kept-alive connections. ``round`` sends a request on each, then reads each
    answer: exactly one response per request; a close by the server, or a response that
    says ``Connection: close``, is a failure."""

    def __init__(self, port: int, n: int, distinct: bool = False) -> None:
        """``distinct``: each connection asks for a path of its own (``/pid/N``)."""
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=15)
                      for _ in range(n)]
        self.buffers = [b""] * n
        self.requests = [GET.replace(b"/pid", f"/pid/{i}".encode()) if distinct else GET
                         for i in range(n)]

    def ask(self, i: int, request: bytes = GET) -> None:
        self.socks[i].sendall(request)

    def answer(self, i: int) -> int:
        """The pid in connection ``i``'s next response."""
        sock, data = self.socks[i], self.buffers[i]
        while b"\r\n\r\n" not in data:
            data += self._recv(sock, i)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += self._recv(sock, i)
        self.buffers[i] = body[length:]
        assert b"connection: close" not in head.lower(), f"connection {i}: {head!r}"
        return int(body[:length])

    @staticmethod
    def _recv(sock: socket.socket, i: int) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection {i} was closed by the server")
        return chunk

    def round(self) -> list[int]:
        for i in range(len(self.socks)):
            self.ask(i, self.requests[i])
        return [self.answer(i) for i in range(len(self.socks))]

    def nothing_more(self) -> bool:
        """No byte beyond the responses read: no request was answered twice."""
        for i, sock in enumerate(self.socks):
            sock.setblocking(False)
            try:
                extra = sock.recv(65536)
            except BlockingIOError:
                extra = b""
            finally:
                sock.settimeout(15)
            if extra or self.buffers[i]:
                return False
        return True

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


class Driver:
    """Rounds on a pool, one after another, in a thread: (time, pids) per round."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.rounds: list[tuple[float, list[int]]] = []
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.rounds.append((started, self.pool.round()))
            except Exception as exc:  # noqa: BLE001 - any failure counts
                self.failures.append(exc)
                return

    def round_after(self, moment: float) -> list[int]:
        """The pids of the first round started after ``moment`` (waits for it)."""
        def done() -> list[int] | None:
            assert not self.failures, self.failures
            return next((pids for started, pids in self.rounds if started > moment), None)
        return wait_for(done, 15, "a round")

    def __enter__(self) -> Driver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(20)


def ready_count(run) -> int:
    return run.log().count(" ready in ")


def spread(pids: list[int]) -> float:
    counts = collections.Counter(pids).values()
    return max(counts) / min(counts)


def two_workers_with_admin(pmx_run):
    """A serving app of 2 workers, and the port of its admin endpoint."""
    admin = free_port()
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--no-access-log",
                  "--admin", f"127.0.0.1:{admin}")
    run.wait_serving(2)
    return run, admin


def test_scale_up_spreads_a_kept_alive_pool_within_a_second_then_scale_down_closes_none(
        pmx_run):
    run, admin = two_workers_with_admin(pmx_run)
    pool = Pool(run.port, 64)
    # Where the 64 land first is least-busy's call: on a loaded machine a worker that
    # has not read its first connection for 25 ms looks stuck, and the rest go to the
    # other one. Evening out works from any start.
    first = pool.round()
    assert len(first) == 64 and set(first) <= run.worker_pids()
    with Driver(pool) as driver:
        driver.round_after(time.monotonic())
        run.signal(signal.SIGTTIN)
        wait_for(lambda: "to 3 worker(s)" in run.log(), 10, "the first scale-up")
        run.signal(signal.SIGTTIN)
        wait_for(lambda: ready_count(run) >= 4, 20, "4 ready workers")
        ready = time.monotonic()
        pids = driver.round_after(ready + 1.0)
        assert len(set(pids)) == 4, collections.Counter(pids)
        assert spread(pids) <= 1.1, collections.Counter(pids)
        status = json.loads(get(admin, "/workers")[1])
        assert sum(w["moved"] for w in status["workers"]) >= 32, status["workers"]
        assert "pmx_worker_connections_moved_total" in get(admin, "/metrics")[1]
        # Scale-down: the two drained workers hand their connections on.
        run.signal(signal.SIGTTOU)
        wait_for(lambda: "to 3 worker(s)" in run.log().split("to 4 worker(s)")[-1], 10, "3")
        run.signal(signal.SIGTTOU)
        wait_for(lambda: run.log().count(") stopped (exit code 0)") >= 2, 20, "2 stopped")
        left = run.worker_pids()
        pids = driver.round_after(time.monotonic())
        assert set(pids) == left and len(left) == 2
        assert not driver.failures, driver.failures
    assert not driver.failures, driver.failures
    assert pool.nothing_more()
    pool.close()


def test_reload_under_a_kept_alive_pool_closes_no_connection_and_fails_no_request(pmx_run):
    run, admin = two_workers_with_admin(pmx_run)
    pool = Pool(run.port, 32)
    old = set(pool.round())
    with Driver(pool) as driver:
        driver.round_after(time.monotonic())
        run.signal(signal.SIGHUP)
        wait_for(lambda: "reload of tests.apps.plain done" in run.log(), 30, "the reload")
        wait_for(lambda: not old & run.worker_pids(), 20, "the old workers to exit")
        pids = driver.round_after(time.monotonic())
        served = len(driver.rounds)
    assert not driver.failures, driver.failures
    assert served > 3
    assert not set(pids) & old and len(set(pids)) == 2, (pids, old)
    assert pool.nothing_more(), "a request was answered twice"
    # Every connection was handed on (more moves if a worker was slow for a moment).
    assert json.loads(get(admin, "/workers")[1])["connections_moved"] >= 32
    pool.close()


# The pool waits idle while a worker boots: on a slow machine longer than the default
# keep-alive timeout (5 s), which would close its connections before anything moves.
IDLE = ("--timeout-keep-alive", "60")


def test_a_connection_with_half_a_request_stays_while_idle_ones_move(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "1", "--no-access-log", *IDLE)
    run.wait_serving(1)
    pool = Pool(run.port, 4)
    [old] = set(pool.round())
    for i in (0, 1, 2):  # half a request head, buffered in the worker's parser
        pool.ask(i, GET[:20])
    run.signal(signal.SIGTTIN)
    wait_for(lambda: ready_count(run) >= 2, 20, "the second worker")
    [new] = run.worker_pids() - {old}
    wait_for(lambda: established([new], run.port) >= 1, 10, "a connection moved")
    for i in (0, 1, 2):
        pool.ask(i, GET[20:])
        assert pool.answer(i) == old
    pool.ask(3)
    assert pool.answer(3) == new
    assert pool.nothing_more()
    pool.close()


def test_no_rebalance_leaves_kept_alive_connections_where_they_are(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "1", "--no-access-log", "--rebalance", "off",
                  *IDLE)
    run.wait_serving(1)
    pool = Pool(run.port, 4)
    [old] = set(pool.round())
    run.signal(signal.SIGTTIN)
    wait_for(lambda: ready_count(run) >= 2, 20, "the second worker")
    [new] = run.worker_pids() - {old}
    wait_for(lambda: get(run.port)[1] == str(new), 10, "the new worker in rotation")
    assert set(pool.round()) == {old}
    pool.close()


@pytest.mark.parametrize("uses", ["all", "join"])
def test_a_pool_opened_while_a_loop_was_blocked_evens_out_once_it_turns(pmx_run, tmp_path,
                                                                       uses):
    """While one worker's loop is blocked, least-busy gives a pool of kept-alive
    connections to the other. Once the loop turns again, ``even`` (part of ``all``)
    moves half of them over; with ``join`` alone they stay where they are."""
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--no-access-log", "--rebalance", uses,
                  *IDLE)
    run.wait_serving(2)
    joined = time.monotonic()  # no evening out after the last join any more:
    wait_for(lambda: time.monotonic() > joined + WINDOW, WINDOW + 1, "the join's window")
    hold = Hold(run.port, tmp_path / "block")
    try:
        # Each on a path of its own: a machine that stalls the loop thread (a virtual
        # machine under steal time) makes a fast request look blocking now and then;
        # were every request for one path, every connection of the pool whose request
        # waited a few ms behind the others of its round would then count as one that
        # has blocked lately (pmx.worker.blocks), which a release does not move.
        pool = Pool(run.port, 20, distinct=True)
        first = pool.round()
    finally:
        blocked = int(hold.release())
    assert len(set(first)) == 1 and blocked not in first
    with Driver(pool) as driver:
        if uses == "all":
            seen: list[collections.Counter[int]] = []

            def even() -> list[int] | None:
                pids = driver.round_after(time.monotonic())
                seen.append(collections.Counter(pids))
                return pids if len(set(pids)) == 2 and spread(pids) <= 1.1 else None
            try:
                pids = wait_for(even, 15, "the pool evened out over both workers")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {seen[-3:]}\n{run.log()[-2000:]}") from None
            assert collections.Counter(pids)[blocked] == 10
        else:
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                assert set(driver.round_after(time.monotonic())) == set(first)
    assert not driver.failures, driver.failures
    assert pool.nothing_more()
    pool.close()


def test_recycling_under_a_kept_alive_pool_hands_connections_on(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--no-access-log",
                  "--max-requests", "400")
    run.wait_serving(2)
    pool = Pool(run.port, 16)
    with Driver(pool) as driver:
        wait_for(lambda: run.log().count("replacing worker #") >= 3 or driver.failures, 60,
                 "three recyclings")
        wait_for(lambda: run.log().count(") stopped (exit code 0)") >= 3 or driver.failures,
                 30, "the recycled workers to exit")
        driver.round_after(time.monotonic())
    assert not driver.failures, driver.failures
    assert pool.nothing_more()
    pool.close()


BLOCK_GET = b"GET /block?ms=15 HTTP/1.1\r\nHost: x\r\n\r\n"


def _block_rounds(pool: Pool, rounds: int) -> list[list[int]]:
    """``rounds`` rounds of blocking requests on every connection of ``pool``."""
    seen = []
    for _ in range(rounds):
        for i in range(len(pool.socks)):
            pool.ask(i, BLOCK_GET)
        seen.append([pool.answer(i) for i in range(len(pool.socks))])
    return seen


def one_on_each_worker(port: int) -> tuple[Pool, list[int]]:
    """Two kept-alive connections on the two workers: opened together they are spread,
    but on a loaded machine a worker whose loop is late is passed over, so try again."""

    def attempt() -> tuple[Pool, list[int]] | None:
        pool = Pool(port, 2)
        pids = pool.round()
        if len(set(pids)) == 2:
            return pool, pids
        pool.close()
        return None

    return wait_for(attempt, 20, "two connections on two workers")


def test_two_connections_that_block_gather_on_one_worker_and_leave_the_other_free(pmx_run):
    """Beside fast clients (whom gathering spares: without them it would not pay).

    The fast clients ask for paths of their own. A machine that stalls the loop thread
    (a virtual machine under steal time) makes a fast request look blocking now and
    then, and its path counts as blocking for a while (pmx.worker.blocks FORGET); were
    every fast request for one path, every fast visit would then count as blocking,
    and gathering would rightly not run, since nobody would gain."""
    run, admin = two_workers_with_admin(pmx_run)
    pool, _pids = one_on_each_worker(run.port)

    def gathered() -> int | None:
        pids = _block_rounds(pool, 3)[-1]
        return pids[0] if len(set(pids)) == 1 else None

    with SteadyLoad(run.port, clients=2, distinct=True) as fast:
        blocking = wait_for(gathered, 20, "both blocking connections on one worker")
    assert not fast.failures, fast.failures[:3]
    # They stay together, and new connections go to the other worker, whose loop is free.
    assert set(_block_rounds(pool, 5)[-1]) == {blocking}
    for _ in range(5):
        assert int(get(run.port, "/pid")[1]) != blocking
    workers = json.loads(get(admin, "/workers")[1])["workers"]
    assert sorted((w["pid"] == blocking, w["blocking"]) for w in workers) == [
        (False, 0), (True, 2)]
    assert pool.nothing_more()
    pool.close()


def _stay_where_they_are(port: int, seconds: float) -> None:
    pool, first = one_on_each_worker(port)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert _block_rounds(pool, 1)[-1] == first
    pool.close()


def test_with_gathering_off_connections_that_block_stay_where_they_are(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--no-access-log", "--rebalance", "drain")
    run.wait_serving(2)
    _stay_where_they_are(run.port, 2)


def test_connections_that_block_with_nobody_to_spare_stay_where_they_are(pmx_run):
    """Every request blocks: gathering the two connections on one worker would only
    make each wait for the other's blocks, and nobody would gain (gather_pays)."""
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--no-access-log")
    run.wait_serving(2)
    _stay_where_they_are(run.port, 2)


def test_a_gathered_connection_stays_on_a_worker_whose_loop_is_blocked(pmx_run):
    """Two clients loop, each on its own kept-alive connection, on requests that block
    the loop for 150 and 110 ms, while others send fast requests: out of step, so
    gathering hands one to the other's worker most often in the middle of a block, and
    it waits there unread while the other worker's loop turns. Least-busy takes unread
    connections back from a held loop to serve them elsewhere, but not one gathered
    there on purpose: else the two would trade places round after round."""
    run, admin = two_workers_with_admin(pmx_run)
    stop = threading.Event()
    served: list[list[tuple[float, int]]] = [[], []]

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=20)
        while not stop.is_set():
            conn.request("GET", f"/block?ms={(150, 110)[index]}")
            served[index].append((time.monotonic(), int(conn.getresponse().read())))
        conn.close()

    def together() -> float | None:
        last = [answers[-2:] for answers in served]
        pids = {pid for answers in last for _, pid in answers}
        if len(pids) == 1 and all(len(answers) == 2 for answers in last):
            return time.monotonic()
        return None

    def moved() -> int:
        return int(json.loads(get(admin, "/workers")[1])["connections_moved"])

    clients = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    with SteadyLoad(run.port, clients=4) as fast:
        for thread in clients:
            thread.start()
        try:
            since = wait_for(together, 20, "both blocking connections on one worker")
            moved_then = moved()
            wait_for(lambda: time.monotonic() > since + 2, 5, "two seconds together")
        finally:
            stop.set()
            for thread in clients:
                thread.join(20)
    assert not fast.failures, fast.failures
    after = [[pid for at, pid in answers if at > since] for answers in served]
    assert len({pid for pids in after for pid in pids}) == 1, after
    # Gathered, nothing moves: the fast clients open a connection per request, and a
    # trade of places is two moves (the old fault made one every 150 ms or so). One
    # move may be on its way as the window closes, its next answer not in yet.
    moved_now = moved()
    assert moved_now - moved_then <= 1, (moved_then, moved_now, get(admin, "/workers")[1])
