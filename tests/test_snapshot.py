"""What least-busy reads of a worker: Worker.snapshot over a real load slot, at given
times (no sleeping: ``now`` is passed in)."""

from __future__ import annotations

import pytest

from pmx.loadslot import LoadSlot
from pmx.master.balancer import STUCK, Snapshot
from pmx.master.workers import IDLE_STUCK, UNREAD_STUCK, Worker


@pytest.fixture
def worker():
    slot = LoadSlot.create()
    yield Worker(id=1, process=None, chan=None, started_at=0.0, slot=slot)  # type: ignore[arg-type]
    slot.close()


def stamp(worker: Worker, received=0, connections=0, inflight=0, blockers=0) -> float:
    """The worker publishes; returns the time it stamped."""
    worker.slot.put(received, connections, inflight, 0, blockers)
    return worker.slot.raw()[-1]


def test_an_idle_worker_is_stuck_only_once_its_idle_stamp_is_overdue(worker):
    at = stamp(worker, connections=3)
    assert worker.snapshot(at + IDLE_STUCK * 0.9) == Snapshot(3, 0, 0.0, 0)
    # Frozen (SIGSTOP) or stuck outside any request: no idle tick for a while.
    assert worker.snapshot(at + 1.0) == Snapshot(3, 0, 1.0, 0)


def test_a_busy_worker_is_stuck_for_as_long_as_it_has_not_stamped(worker):
    at = stamp(worker, connections=1, inflight=1, blockers=1)
    assert worker.snapshot(at + 0.020) == Snapshot(1, 1, pytest.approx(0.020), 1)


def test_a_quiet_worker_is_stuck_only_past_the_slack_it_published(worker):
    # Requests in flight, none starting or ending: its next stamp comes 15 ms later
    # than a busy loop's, and it said so.
    worker.slot.put(0, 1, 1, 0, 0, slack=0.015)
    at = worker.slot.raw()[-1]
    assert worker.snapshot(at + 0.010).stuck <= 0.0
    assert worker.snapshot(at + 0.040).stuck == pytest.approx(0.025)


def test_fds_unread_since_they_were_sent_make_an_idle_worker_stuck(worker):
    at = stamp(worker)
    worker.handed(2, at + 0.010)
    worker.handed(1, at + 0.050)
    # Unread for less than UNREAD_STUCK: waiting for a CPU, most likely.
    assert worker.snapshot(at + 0.010 + UNREAD_STUCK * 0.9) == Snapshot(3, 0, 0.0, 0)
    # Nothing read: stuck since the first hand-off.
    assert worker.snapshot(at + 0.100) == Snapshot(3, 0, pytest.approx(0.090), 0)
    # The first two read (and open): stuck since the second hand-off only.
    stamp(worker, received=2, connections=2)
    assert worker.snapshot(at + 0.100) == Snapshot(3, 0, pytest.approx(0.050), 0)
    # All read: not stuck, and nothing left to remember.
    stamp(worker, received=3, connections=3)
    assert worker.snapshot(at + 0.100) == Snapshot(3, 0, 0.0, 0)
    assert not worker.handoffs


def test_load_counts_fds_in_the_channel_and_open_connections(worker):
    stamp(worker, received=4, connections=2)  # two of the four already closed
    worker.handed(4, 0.0)
    worker.handed(3, 0.0)
    assert worker.load == 3 + 2


class Peek:
    """Stands in for LoopPeek: what the kernel says of the worker's loop."""

    def __init__(self, waiting: bool) -> None:
        self.answer = waiting
        self.asked = 0

    def waiting(self) -> bool:
        self.asked += 1
        return self.answer


def test_a_loop_seen_waiting_in_epoll_is_not_stuck_for_lack_of_stamps(worker):
    worker.peek = Peek(waiting=True)
    at = stamp(worker, connections=1, inflight=1)
    # A fresh stamp is trusted without asking the kernel.
    assert worker.snapshot(at + STUCK * 0.5).stuck == pytest.approx(STUCK * 0.5)
    assert worker.peek.asked == 0
    # A stale one is checked: the loop waits for its requests' I/O, so it is not stuck.
    assert worker.snapshot(at + 0.100).stuck == 0.0
    # Asked at most once per STUCK: within it, stuck counts from the last time seen.
    assert worker.snapshot(at + 0.100 + STUCK * 0.5).stuck == pytest.approx(STUCK * 0.5)
    assert worker.peek.asked == 1


def test_a_loop_held_outside_epoll_stays_stuck(worker):
    worker.peek = Peek(waiting=True)
    at = stamp(worker, connections=1, inflight=1)
    assert worker.snapshot(at + 0.100).stuck == 0.0
    # Then a request blocks the loop: no stamp, and the kernel no longer sees it wait.
    worker.peek.answer = False
    assert worker.snapshot(at + 0.300).stuck == pytest.approx(0.200)
    assert worker.snapshot(at + 0.500).stuck == pytest.approx(0.400)
