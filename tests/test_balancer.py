from collections import Counter
from dataclasses import dataclass

import pytest

from pmx.master.balancer import (
    POLICIES,
    STUCK,
    Auto,
    LeastBusy,
    LeastConnections,
    Packed,
    RoundRobin,
    Snapshot,
    make_policy,
)


@dataclass
class Worker:
    id: int
    load: int = 0
    inflight: int = 0
    stuck: float = 0.0
    blockers: int = 0
    full: bool = False
    holding: int = 0
    threads: int = 0
    threads_taken: int = 0
    blocked: int = 0

    def snapshot(self, now: float) -> Snapshot:
        return Snapshot(self.load, self.inflight, self.stuck, self.blockers, self.full,
                        self.holding, self.threads, self.threads_taken, self.blocked)


def workers(*loads):
    return [Worker(id=i, load=load) for i, load in enumerate(loads)]


def pick_ids(policy, candidates, times, count_load=False):
    """Pick ``times`` times; with ``count_load`` do what the master does and count the
    connection into the picked worker's load before the next pick."""
    ids = []
    for _ in range(times):
        chosen = policy.pick(candidates)
        ids.append(chosen.id)
        if count_load:
            chosen.load += 1
    return ids


# -- registry --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"), [("round-robin", RoundRobin), ("least-conn", LeastConnections),
                      ("least-busy", LeastBusy), ("packed", Packed), ("auto", Auto)]
)
def test_make_policy(name, cls):
    policy = make_policy(name)
    assert type(policy) is cls
    assert policy.name == name


@pytest.mark.parametrize(("name", "live_load", "watches_loops", "evens_out"), [
    ("round-robin", False, False, True), ("least-conn", True, False, True),
    ("least-busy", True, True, True), ("packed", True, True, False),
    ("auto", True, True, True),  # (one worker, one CPU: least-busy)
])
def test_what_each_policy_asks_of_the_workers_and_of_rebalancing(name, live_load,
                                                                 watches_loops, evens_out):
    """Whether workers publish every change of their load, watch for requests that
    block, and whether counts left uneven are evened out."""
    policy = make_policy(name)
    assert (policy.live_load, policy.watches_loops, policy.evens_out) == (
        live_load, watches_loops, evens_out)


def test_make_policy_returns_fresh_instances():
    assert make_policy("round-robin") is not make_policy("round-robin")


def test_make_policy_unknown():
    with pytest.raises(KeyError):
        make_policy("random")


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policies_named_by_key(name):
    assert POLICIES[name].name == name
    assert make_policy(name).name == name


def test_policies_match_config_choices():
    from pmx.config import BALANCE_POLICIES

    assert set(POLICIES) == set(BALANCE_POLICIES)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_empty_candidates(name):
    policy = make_policy(name)
    assert policy.pick([]) is None
    assert policy.pick(()) is None
    # An empty pick does not break the next real one.
    candidates = workers(0, 0)
    assert policy.pick(candidates) in candidates


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_single_candidate(name):
    policy = make_policy(name)
    only = Worker(id=7, load=3)
    assert [policy.pick([only]) for _ in range(5)] == [only] * 5


# -- round robin -----------------------------------------------------------------------


def test_round_robin_order():
    assert pick_ids(RoundRobin(), workers(0, 0, 0), 7) == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize(("count", "picks"), [(1, 10), (2, 10), (3, 300), (4, 400), (7, 70)])
def test_round_robin_even(count, picks):
    counts = Counter(pick_ids(RoundRobin(), workers(*[0] * count), picks))
    assert counts == {i: picks // count for i in range(count)}


@pytest.mark.parametrize("count_load", [False, True])
def test_round_robin_ignores_load(count_load):
    candidates = workers(100, 0, 5, 0)
    ids = pick_ids(RoundRobin(), candidates, 8, count_load=count_load)
    assert ids == [0, 1, 2, 3, 0, 1, 2, 3]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (4, 3),
        (4, 1),
        (3, 5),
        (1, 4),
        (5, 2),
    ],
)
@pytest.mark.parametrize("first_picks", [0, 1, 2, 3, 4, 5])
def test_round_robin_pool_changes(before, after, first_picks):
    policy = RoundRobin()
    pick_ids(policy, workers(*[0] * before), first_picks)
    # Whatever the cursor was, the changed pool is cycled completely, each once.
    candidates = workers(*[0] * after)
    ids = pick_ids(policy, candidates, after * 3)
    assert Counter(ids) == {i: 3 for i in range(after)}
    # ...and in order, continuing from wherever it landed.
    start = ids[0]
    assert ids == [(start + n) % after for n in range(after * 3)]


def test_round_robin_shrink_does_not_raise():
    policy = RoundRobin()
    big = workers(0, 0, 0, 0)
    assert pick_ids(policy, big, 3) == [0, 1, 2]
    small = big[:2]
    chosen = policy.pick(small)
    assert chosen in small
    assert policy.pick(small) is not chosen


# -- least connections -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("loads", "expect"),
    [
        ((0, 1, 2), 0),
        ((3, 1, 2), 1),
        ((3, 2, 1), 2),
        ((5, 5, 0, 5), 2),
        ((9, 9, 9, 8), 3),
    ],
)
def test_least_conn_picks_minimum(loads, expect):
    assert LeastConnections().pick(workers(*loads)).id == expect


@pytest.mark.parametrize(("loads", "expect"), [((2, 1, 1), 1), ((0, 5, 0), 0)])
def test_least_conn_first_tie_from_cursor(loads, expect):
    assert LeastConnections().pick(workers(*loads)).id == expect


def test_least_conn_ties_round_robin():
    candidates = workers(0, 0, 0, 0)
    ids = pick_ids(LeastConnections(), candidates, 8)
    assert ids == [0, 1, 2, 3, 0, 1, 2, 3]
    assert Counter(ids) == {0: 2, 1: 2, 2: 2, 3: 2}


def test_least_conn_ties_among_minimum_only():
    candidates = workers(0, 4, 0, 4)
    ids = pick_ids(LeastConnections(), candidates, 6)
    assert ids == [0, 2, 0, 2, 0, 2]


@pytest.mark.parametrize(("count", "picks"), [(2, 10), (3, 99), (4, 100), (5, 1000)])
def test_least_conn_even_when_load_counted(count, picks):
    candidates = workers(*[0] * count)
    counts = Counter(pick_ids(LeastConnections(), candidates, picks, count_load=True))
    assert counts == {i: picks // count for i in range(count)}
    assert [c.load for c in candidates] == [picks // count] * count


def test_least_conn_load_counted_stays_balanced_at_every_step():
    candidates = workers(0, 0, 0, 0)
    policy = LeastConnections()
    for _ in range(100):
        policy.pick(candidates).load += 1
        loads = [c.load for c in candidates]
        assert max(loads) - min(loads) <= 1


def test_least_conn_avoids_loaded_until_others_catch_up():
    candidates = workers(10, 0, 0, 0)
    policy = LeastConnections()
    ids = pick_ids(policy, candidates, 30, count_load=True)
    assert 0 not in ids
    assert Counter(ids) == {1: 10, 2: 10, 3: 10}
    assert [c.load for c in candidates] == [10, 10, 10, 10]
    # All caught up: the busy one is back in rotation.
    more = pick_ids(policy, candidates, 4, count_load=True)
    assert sorted(more) == [0, 1, 2, 3]


def test_least_conn_follows_closed_connections():
    candidates = workers(0, 0, 0)
    policy = LeastConnections()
    pick_ids(policy, candidates, 9, count_load=True)
    assert [c.load for c in candidates] == [3, 3, 3]
    candidates[1].load = 0  # its connections closed
    assert pick_ids(policy, candidates, 3, count_load=True) == [1, 1, 1]


def test_least_conn_pool_changes():
    policy = LeastConnections()
    candidates = workers(0, 0, 0, 0)
    pick_ids(policy, candidates, 3, count_load=True)
    del candidates[0]  # cursor now points past the end of the shorter list
    chosen = policy.pick(candidates)
    assert chosen in candidates
    assert chosen.load == 0
    chosen.load += 1
    candidates.append(Worker(id=9))
    candidates.append(Worker(id=10))
    ids = pick_ids(policy, candidates, 2, count_load=True)
    assert sorted(ids) == [9, 10]


@pytest.mark.parametrize(
    "loads",
    [(0,), (1, 0), (0, 1), (3, 3, 3), (2, 0, 1, 0), (7, 1, 4, 1, 9)],
)
def test_least_conn_never_worse_than_minimum(loads):
    policy = LeastConnections()
    for _ in range(len(loads) * 3):
        candidates = workers(*loads)
        assert policy.pick(candidates).load == min(loads)


# -- least-busy ----------------------------------------------------------------------


def test_least_busy_prefers_a_loop_stuck_briefly_to_one_held():
    policy = make_policy("least-busy")
    candidates = [Worker(id=0, load=0, inflight=1, stuck=0.050),
                  Worker(id=1, load=9, inflight=1, stuck=0.005)]
    assert policy.pick(candidates).id == 1


def test_least_busy_avoids_a_stuck_worker_whatever_its_connections():
    policy = make_policy("least-busy")
    # Worker 0 holds many idle keep-alive connections but its loop turns; worker 1 is
    # stuck in a request (no stamp for 10 ms).
    candidates = [Worker(id=0, load=50), Worker(id=1, load=1, inflight=1, stuck=0.010)]
    assert [policy.pick(candidates).id for _ in range(5)] == [0] * 5


def test_least_busy_is_not_fooled_by_the_jitter_of_one_stamp():
    # Under STUCK the loop is taken as turning: the connection count decides.
    policy = make_policy("least-busy")
    candidates = [Worker(id=0, load=5), Worker(id=1, load=1, inflight=1, stuck=STUCK * 0.9)]
    assert policy.pick(candidates).id == 1


def test_least_busy_waits_while_every_loop_is_held():
    policy = make_policy("least-busy")
    held = [Worker(id=0, load=1, inflight=1, stuck=0.040),
            Worker(id=1, load=9, inflight=1, stuck=0.030)]
    assert policy.waits(policy.ranks(held, 0.0))
    # One loop turns again, holds a connection that blocks, or is stuck only briefly
    # (waiting for a CPU, most likely): no waiting, and it gets the connections.
    for turning in (Worker(id=1, load=9, inflight=1, stuck=0.001),
                    Worker(id=1, load=9, blockers=1),
                    Worker(id=1, load=9, inflight=1, stuck=0.010)):
        candidates = [held[0], turning]
        assert not policy.waits(policy.ranks(candidates, 0.0))
        assert policy.spread(candidates, 5) == [0, 5]


def test_least_busy_counts_a_request_for_a_blocking_path_as_held_from_its_start():
    policy = make_policy("least-busy")
    # Worker 0 has just started a request whose path blocked last time: its loop has
    # not missed a heartbeat yet, but it is about to block.
    candidates = [Worker(id=0, load=1, inflight=1, holding=1), Worker(id=1, load=9,
                                                                      inflight=3)]
    assert policy.spread(candidates, 4) == [0, 4]
    candidates[1].stuck = 0.010  # even a loop stuck briefly comes first
    assert policy.spread(candidates, 4) == [0, 4]
    candidates[1].stuck = 0.040  # both held: wait for one to turn
    assert policy.waits(policy.ranks(candidates, 0.0))


@pytest.mark.parametrize("name", ["round-robin", "least-conn"])
def test_other_policies_never_wait(name):
    policy = make_policy(name)
    stuck = [Worker(id=0, inflight=1, stuck=1.0), Worker(id=1, inflight=1, stuck=1.0)]
    assert not policy.waits(policy.ranks(stuck, 0.0))


def test_least_busy_keeps_away_from_a_connection_that_blocks():
    policy = make_policy("least-busy")
    # Worker 0's loop turns now but holds a kept-alive connection that blocks it again
    # and again; worker 1 has a dozen idle connections.
    candidates = [Worker(id=0, load=1, blockers=1), Worker(id=1, load=12)]
    assert [policy.pick(candidates).id for _ in range(4)] == [1] * 4
    # ...and to a loop stuck for less than HELD_STUCK with nothing marked, which most
    # likely waits for a CPU, while the blocking connection will hold worker 0 for a
    # whole block.
    candidates[1].stuck, candidates[1].inflight = 0.020, 1
    assert policy.pick(candidates).id == 1
    # A loop held for longer is worse.
    candidates[1].stuck = 0.030
    assert policy.pick(candidates).id == 0
    # When every worker holds one, the connection count decides.
    candidates = [Worker(id=0, load=3, blockers=1), Worker(id=1, load=2, blockers=2)]
    assert policy.pick(candidates).id == 1


def test_least_busy_fewer_requests_in_flight_breaks_a_tie_of_connections():
    policy = make_policy("least-busy")
    candidates = [Worker(id=0, load=2, inflight=2), Worker(id=1, load=2, inflight=0)]
    assert policy.pick(candidates).id == 1


def test_least_busy_spreads_an_idle_pool_evenly_as_the_master_counts():
    policy = make_policy("least-busy")
    candidates = workers(0, 0, 0, 0)
    picked = []
    for _ in range(100):
        worker = policy.pick(candidates)
        worker.load += 1  # the master counts a handed-off fd into the load at once
        picked.append(worker.id)
    assert Counter(picked) == {0: 25, 1: 25, 2: 25, 3: 25}


def test_least_busy_ties_go_round_robin():
    policy = make_policy("least-busy")
    candidates = workers(1, 1, 1)
    assert [policy.pick(candidates).id for _ in range(6)] == [0, 1, 2, 0, 1, 2]


# -- packed ------------------------------------------------------------------------------


def accepted(policy, candidates, count):
    return policy.share_accepted(policy.ranks(candidates, 0.0), count)


def test_make_policy_gives_packed_the_cpu_count():
    assert make_policy("packed", 3).cores == 3
    assert make_policy("packed", 0).cores == 1


def test_packed_fills_as_many_workers_as_cpus_with_new_connections():
    policy = make_policy("packed", 2)
    candidates = workers(0, 0, 0, 0)
    assert accepted(policy, candidates, 10) == [5, 5, 0, 0]
    # Whatever they hold already: the others are woken only for a reason.
    assert accepted(policy, workers(9, 7, 0, 0), 3) == [1, 2, 0, 0]


def test_packed_places_connections_handed_back_by_count():
    # Idle kept-alive connections (a join, a drain) go where connections are fewest.
    policy = make_policy("packed", 2)
    assert policy.spread(workers(3, 3, 0, 0), 6) == [0, 0, 3, 3]


@pytest.mark.parametrize("held", [
    {"holding": 1, "inflight": 1},  # a request for a path that blocked
    {"blockers": 1},  # a connection that blocks
    {"inflight": 1, "stuck": 0.040},  # held for longer than a CPU wait
    {"full": True},
])
def test_packed_replaces_a_worker_held_by_its_app_with_the_next_one(held):
    policy = make_policy("packed", 2)
    candidates = workers(0, 0, 0, 0)
    for key, value in held.items():
        setattr(candidates[0], key, value)
    assert accepted(policy, candidates, 6) == [0, 3, 3, 0]


def test_packed_does_not_pack_onto_a_worker_whose_connections_blocked_lately():
    # Heavy-tailed requests: worker 0 holds connections that blocked its loop a moment
    # ago, unmarked now (their last requests were fast). A fast connection packed there
    # would wait out their next block; the clean workers are the active ones.
    policy = make_policy("packed", 2)
    candidates = workers(4, 0, 0, 0)
    candidates[0].blocked = 2
    assert accepted(policy, candidates, 6) == [0, 3, 3, 0]
    # When every worker holds one, there is nothing clean to pack on: least-busy's rank.
    for worker in candidates:
        worker.blocked = 1
    assert accepted(policy, candidates, 6) == [0, 2, 2, 2]


def test_packed_keeps_a_loop_stuck_briefly_active():
    # With more loops runnable than CPUs, a loop stuck for a few ms most likely waits for
    # a CPU, which a spare woken for the connection would wait for too.
    policy = make_policy("packed", 2)
    candidates = workers(0, 0, 0, 0)
    candidates[0].inflight, candidates[0].stuck = 1, 0.010
    assert accepted(policy, candidates, 4) == [0, 4, 0, 0]  # the one turning first
    candidates[1].inflight, candidates[1].stuck = 1, 0.010
    assert accepted(policy, candidates, 4) == [2, 2, 0, 0]


def test_packed_with_a_worker_per_cpu_is_least_busy():
    packed, least_busy = make_policy("packed", 4), make_policy("least-busy")
    for loads in [(0, 0, 0, 0), (3, 0, 7, 1)]:
        candidates = workers(*loads)
        candidates[1].blockers = 1
        assert accepted(packed, candidates, 9) == accepted(least_busy, candidates, 9)


def test_make_policy_gives_auto_the_cpus_and_the_workers_wanted():
    policy = make_policy("auto", 2, 16)
    assert (policy.cores, policy.workers, policy.packing) == (2, 16, True)
    assert policy.describe() == "auto: packed, 16 worker(s) on 2 CPU(s)"
    assert make_policy("auto", 2, 2).describe() == "auto: least-busy, 2 worker(s) on 2 CPU(s)"
    assert make_policy("least-busy", 2).describe() == "least-busy"


@pytest.mark.parametrize("cores", [2, 4])
def test_auto_with_a_cpu_per_worker_is_least_busy(cores):
    """As many CPUs as workers or more: least-busy's picks, for connections just
    accepted and handed back alike, and counts left uneven are evened out."""
    auto, least_busy = make_policy("auto", cores, 2), make_policy("least-busy")
    assert not auto.packing and auto.evens_out
    for loads in [(0, 0), (3, 0), (5, 5)]:
        for stuck in [0.0, 0.010, 0.040]:
            a, b = workers(*loads), workers(*loads)
            a[0].inflight = b[0].inflight = 1
            a[0].stuck = b[0].stuck = stuck
            assert accepted(auto, a, 9) == accepted(least_busy, b, 9)
            assert auto.spread(a, 5) == least_busy.spread(b, 5)


def test_auto_with_more_workers_than_cpus_is_packed():
    auto, packed = make_policy("auto", 2, 4), make_policy("packed", 2)
    assert auto.packing and not auto.evens_out
    assert accepted(auto, workers(0, 0, 0, 0), 10) == [5, 5, 0, 0]
    candidates = pooled(0, 0, 0, 0)
    serving(candidates[0], 10)
    assert accepted(auto, candidates, 6) == accepted(packed, candidates, 6) == [0, 3, 3, 0]
    assert auto.spread(workers(3, 3, 0, 0), 6) == [0, 0, 3, 3]


def test_auto_follows_the_workers_the_app_wants():
    """Scaled past the CPUs it packs, and back within them it spreads again; the
    workers in rotation (one more for a moment during a reload) do not count."""
    policy = make_policy("auto", 2, 2)
    assert accepted(policy, workers(0, 0, 0), 6) == [2, 2, 2]
    policy.wants(3)
    assert policy.packing and not policy.evens_out
    assert accepted(policy, workers(0, 0, 0), 6) == [3, 3, 0]
    policy.wants(2)
    assert accepted(policy, workers(0, 0, 0), 6) == [2, 2, 2]
    assert policy.evens_out


@pytest.mark.parametrize("name", ["round-robin", "least-conn", "least-busy", "packed"])
def test_only_auto_minds_the_workers_wanted(name):
    told, untold = make_policy(name, 2), make_policy(name, 2)
    told.wants(1)
    for loads in [(0, 0, 0, 0), (2, 0, 1, 0)]:
        assert accepted(told, workers(*loads), 8) == accepted(untold, workers(*loads), 8)
    assert told.evens_out == untold.evens_out


def pooled(*loads, threads=10):
    """Workers of a WSGI app, whose requests run in a pool of ``threads``."""
    candidates = workers(*loads)
    for worker in candidates:
        worker.threads = threads
    return candidates


def serving(worker, requests):
    """A WSGI worker with ``requests`` in flight: each takes a thread."""
    worker.inflight = worker.threads_taken = requests


def test_packed_passes_over_a_worker_whose_thread_pool_is_busy():
    # A WSGI worker with a request in flight for each of its threads: a new request there
    # would wait for a thread while a spare worker's threads are idle.
    policy = make_policy("packed", 2)
    candidates = pooled(0, 0, 0, 0)
    serving(candidates[0], 10)
    assert accepted(policy, candidates, 6) == [0, 3, 3, 0]
    serving(candidates[0], 8)  # two threads free: active again, for two more
    assert accepted(policy, candidates, 6) == [2, 2, 2, 0]


def test_packed_counts_the_requests_of_the_connections_it_hands_out_at_once():
    # A burst: each connection handed out is a request about to take a thread.
    assert accepted(make_policy("packed", 2), pooled(0, 0, 0, 0, threads=2), 6) == [2, 2, 1, 1]


def test_packed_spreads_by_least_busy_rank_once_every_pool_is_busy():
    candidates = pooled(2, 0, 1, 3)
    for worker in candidates:
        serving(worker, 10)
    assert accepted(make_policy("packed", 2), candidates, 6) == [1, 3, 2, 0]


def test_packed_passes_over_an_asgi_worker_whose_anyio_threads_are_all_taken():
    # An ASGI app's synchronous code (FastAPI's def endpoints) runs in anyio's pool: what
    # counts is the threads taken, not the requests in flight (most await on the loop).
    policy = make_policy("packed", 2)
    candidates = pooled(0, 0, 0, 0, threads=40)
    candidates[0].inflight, candidates[0].threads_taken = 500, 40
    assert accepted(policy, candidates, 6) == [0, 3, 3, 0]
    candidates[0].threads_taken = 3
    assert accepted(policy, candidates, 6) == [3, 3, 0, 0]


def test_packed_counts_no_pool_for_an_app_on_the_event_loop():
    # ASGI (threads 0): requests in flight wait on I/O, not for a thread.
    candidates = workers(0, 0, 0, 0)
    candidates[0].inflight = 500
    assert accepted(make_policy("packed", 2), candidates, 6) == [3, 3, 0, 0]


def test_packed_places_handed_back_connections_with_its_own_ranks():
    assert make_policy("packed", 2).spread(pooled(3, 3, 0, 0), 6) == [0, 0, 3, 3]


def test_packed_waits_while_every_loop_is_held():
    policy = make_policy("packed", 1)
    held = [Worker(id=0, inflight=1, stuck=0.040), Worker(id=1, inflight=1, holding=1)]
    assert policy.waits(policy.ranks(held, 0.0))


# -- spread: a batch of connections at once ---------------------------------------------


def sequential_counts(policy, candidates, count):
    """What ``count`` picks give when each counts its connection into the worker's
    load."""
    counts = [0] * len(candidates)
    for _ in range(count):
        chosen = policy.pick(candidates)
        chosen.load += 1
        counts[candidates.index(chosen)] += 1
    return counts


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize(
    ("scores", "batches"),
    [
        ((0, 0), (1, 1, 5, 64)),
        ((3, 0, 7), (2, 9, 1, 30)),
        ((5, 5, 5, 5), (3, 3, 3)),
        ((0, 40), (10, 50, 1)),
        ((2,), (4, 1)),
    ],
)
def test_spread_equals_successive_picks(name, scores, batches):
    by_spread, by_pick = make_policy(name), make_policy(name)
    # Every other worker is stuck or holds a connection that blocks: least-busy's
    # classes must not change what a batch gets against picks one by one.
    def pool():
        return [Worker(id=i, load=s, inflight=i % 2, stuck=0.005 * (i % 3 == 2),
                       blockers=i % 2) for i, s in enumerate(scores)]

    spread_pool, pick_pool = pool(), pool()
    for batch in batches:
        counts = by_spread.spread(spread_pool, batch)
        assert sum(counts) == batch
        for worker, count in zip(spread_pool, counts, strict=True):
            worker.load += count
        assert counts == sequential_counts(by_pick, pick_pool, batch)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_spread_of_an_empty_pool(name):
    assert make_policy(name).spread([], 5) == []


def test_spread_least_busy_tops_up_the_less_loaded_worker_first():
    # One worker has 6 connections: a batch of 8 tops the other up to it, then alternates.
    assert make_policy("least-busy").spread(workers(0, 6), 8) == [7, 1]


def test_spread_least_busy_sends_a_batch_past_a_stuck_worker():
    stuck = Worker(id=0, load=0, inflight=1, stuck=0.050)
    assert make_policy("least-busy").spread([stuck, Worker(id=1, load=30)], 8) == [0, 8]


# -- full workers (at their fd budget) ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_passes_over_a_full_worker_and_waits_when_all_are(name):
    policy = make_policy(name)
    candidates = workers(0, 5, 9)
    candidates[0].full = True  # the least loaded, and next in round robin
    assert not policy.waits(policy.ranks(candidates, 0.0))
    counts = policy.spread(candidates, 6)
    assert counts[0] == 0 and sum(counts) == 6
    for worker in candidates:
        worker.full = True
    assert policy.waits(policy.ranks(candidates, 0.0))


def test_round_robin_carries_on_its_cycle_around_a_full_worker():
    policy = RoundRobin()
    candidates = workers(0, 0, 0)
    candidates[1].full = True
    assert pick_ids(policy, candidates, 4) == [0, 2, 0, 2]
    candidates[1].full = False
    assert pick_ids(policy, candidates, 3) == [0, 1, 2]
