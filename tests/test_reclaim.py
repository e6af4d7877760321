"""Taking back connections a worker left unread: Worker.reclaim over a real inbox socket
pair, and the Dispatcher's choice of whose to take back, over real load slots and real
sockets, in-process (no worker processes: the test reads the inboxes itself)."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from pmx import channel
from pmx.loadslot import LoadSlot
from pmx.master.balancer import STUCK, LeastBusy, RoundRobin
from pmx.master.dispatch import Dispatcher
from pmx.master.workers import Worker


def make_worker(worker_id: int) -> Worker:
    inbox, inbox_back = channel.socketpair()
    inbox.setblocking(False)
    inbox_back.setblocking(False)
    return Worker(id=worker_id, process=None, chan=None, started_at=0.0,  # type: ignore[arg-type]
                  inbox=inbox, inbox_back=inbox_back, slot=LoadSlot.create())


@pytest.fixture
def workers():
    made = [make_worker(1), make_worker(2)]
    yield made
    for worker in made:
        worker.inbox.close()
        worker.inbox_back.close()
        worker.slot.close()


def null_fds(count: int) -> list[int]:
    return [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]


def hand(worker: Worker, count: int) -> list[int]:
    """Send ``count`` fds to the worker's inbox as the dispatcher does; returns their
    numbers in the master (the copies stay open: the test closes them)."""
    fds = null_fds(count)
    channel.send_fds(worker.inbox, fds)
    worker.handed(count, time.monotonic())
    return fds


def read_inbox(worker: Worker) -> list[int]:
    """What the worker itself would read now."""
    got: list[int] = []
    for _message, fds in channel.pending(worker.inbox_back):
        got += fds
    return got


def close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def test_reclaim_takes_every_unread_fd_and_forgets_their_hand_offs(workers):
    worker = workers[0]
    sent = hand(worker, 2) + hand(worker, 3)
    taken = worker.reclaim()
    assert len(taken) == 5
    assert worker.sent == 0 and not worker.handoffs
    assert worker.reclaim() == []  # nothing left, and nothing counted twice
    close(sent + taken)


def test_what_the_worker_read_first_stays_counted_as_sent(workers):
    worker = workers[0]
    first = hand(worker, 2)
    read = []
    message, fds = channel.recv(worker.inbox_back)  # the worker reads the first message
    read += fds
    later = hand(worker, 3)
    taken = worker.reclaim()
    assert len(taken) == 3
    assert worker.sent == 2
    assert [sent for sent, _at in worker.handoffs] == [2]  # only the one it read
    close(first + read + later + taken)


def test_a_worker_without_an_inbox_has_nothing_to_reclaim():
    worker = Worker(id=1, process=None, chan=None, started_at=0.0)  # type: ignore[arg-type]
    assert worker.reclaim() == []


def stamp(worker: Worker, inflight: int) -> float:
    """The worker publishes what it has taken (all it was sent and read) and
    ``inflight`` requests; returns the time it stamped."""
    worker.slot.put(0, 0, inflight, 0, 0)
    return worker.slot.raw()[-1]


def look(dispatcher: Dispatcher, at: float) -> bool:
    """The dispatcher looks at its workers at time ``at`` (on an event loop: what it
    hands on arms its next look)."""
    rotation = dispatcher.rotation

    async def once() -> bool:
        try:
            return dispatcher._reclaim(rotation, dispatcher.policy.ranks(rotation, at), at)
        finally:
            dispatcher.close()

    return asyncio.run(once())


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture
def dispatcher(workers, listener):
    made = Dispatcher(listener, LeastBusy())
    made.rotation = list(workers)
    return made


def test_least_busy_moves_a_stuck_workers_unread_fds_to_a_turning_one(workers, dispatcher):
    stuck_one, free_one = workers
    sent = hand(stuck_one, 3)
    at = stamp(stuck_one, inflight=1)  # then its loop stops: no stamp for 3 x STUCK
    stamp(free_one, inflight=0)  # idle, and stamping every tick
    assert look(dispatcher, at + STUCK * 3)
    moved = read_inbox(free_one)
    assert len(moved) == 3
    assert read_inbox(stuck_one) == []
    assert (stuck_one.sent, stuck_one.reclaimed, free_one.sent) == (0, 3, 3)
    close(sent + moved)


@pytest.mark.parametrize(("other_inflight", "later"), [
    (0, STUCK / 3),  # in flight and stamped within STUCK: its loop turns
    (1, 0.100),  # both held: no better place for them
], ids=["its loop turns", "every loop is held"])
def test_nothing_moves_when_no_worker_ranks_better(workers, dispatcher, other_inflight, later):
    first, other = workers
    sent = hand(first, 2)
    stamp(other, inflight=other_inflight)
    at = stamp(first, inflight=1)
    assert not look(dispatcher, at + later)
    left = read_inbox(first)
    assert len(left) == 2 and first.reclaimed == 0
    close(sent + left)


def test_only_least_busy_takes_connections_back(listener):
    assert Dispatcher(listener, LeastBusy()).reclaims
    assert not Dispatcher(listener, RoundRobin()).reclaims
