"""Balancing policies: which ready worker gets the next connection.

A policy is a pure object: it looks only at what each candidate reports (``load``, the
connections handed to it and not yet closed, or a ``Snapshot`` of its present state)
and at its own memory of past picks. No sockets; the time comes in as a number, so each
policy is unit-tested with plain values. Candidates always come in the same (worker id)
order, and ties go round robin from a cursor, so an idle pool is spread evenly.

The dispatcher asks a policy for the candidates' ``ranks`` once per readiness of the
listening socket. Every policy passes over a *full* worker (one holding as many
connections as its fd limit allows: ``pmx.worker.capacity``), and waits if all are.
If the policy ``waits`` (no worker can take a connection now), it
accepts nothing and asks again a millisecond later: the connections wait in the
kernel's backlog, as they would for workers that accept themselves. Otherwise it
accepts the batch and ``share(ranks, n)`` says how many of the ``n`` connections each
candidate gets: exactly what ``n`` successive picks would give if every pick counted
its connection into the chosen worker's load. ``pick`` and ``spread`` do both steps.

auto, the default
-----------------
``packed`` (below) while the app wants more workers than the CPUs they may use, and
``least-busy`` otherwise; it follows the wanted count as the app is scaled. The reason
is one: never keep more loops busy than there are CPUs to run them. With a CPU per
worker that is every worker, and least-busy's even spread costs nothing; with more
workers than CPUs, spreading wakes a process whose caches the others have filled for
nearly every request (measured at 16 workers on 2 CPUs: least-busy used 1.4 to 2.6
times uvicorn's CPU per request, auto 0.7 to 1.9; docs/benchmarks.md). Counting the
wanted workers rather than those in rotation keeps the choice still while a reload
runs a worker more for a moment.

least-busy
----------
The kernel's shared accept, which ``uvicorn --workers`` and gunicorn rely on, is a pull:
a worker whose event loop is stuck in a synchronous call does not accept, so nothing new
waits behind it. The master pushes, so it must know which loops are turning *now*, and
it must not use the past except where the past predicts the future. least-busy ranks
each worker by, in order:

1. **Its class**, from what its load slot says now (``busy_rank``), best first:

   - *turning*: its loop makes progress. A worker with requests in flight stamps its
     load slot at least every millisecond (its heartbeat) while its loop turns (less
     often while those requests only await, and it publishes by how much: its slack,
     pmx.worker.process QUIET_BEAT), and an idle one every 100 ms.
   - *stuck briefly*: its stamp is older than ``STUCK`` past its slack with requests
     in flight (or, idle, older than 250 ms, or it has an fd unread for 25 ms:
     ``Worker.snapshot``), for less than ``HELD_STUCK``, and nothing it runs is known
     to block. On a busy machine that is most often a loop waiting for a CPU, which the
     scheduler gives it within its period.
   - *holds a connection that blocks*: the worker marks an open connection whose last
     request held its loop for over ``STUCK`` in one go (``pmx.worker.blocks``); the
     mark goes when the connection closes or its next request does not block. A
     kept-alive client whose requests block will block again, and a connection handed
     to its worker in the gap between two blocks waits out the whole next one: worse
     than a loop waiting for a CPU. A connection that blocked and closed leaves no
     mark: a worker is not avoided for what is over.
   - *held*: stuck for over ``HELD_STUCK`` (by the app, not by a busy machine), or
     running a request for a path whose last request blocked (*holding*, published
     before the app runs, so the master knows the loop is about to block before it has
     missed a heartbeat), or full.

   When every worker is held, least-busy *waits*: which loop frees first cannot be
   known (a loop held for 40 ms in a 50 ms call frees before one held for 30 ms in a
   longer one; for heavy-tailed durations it is the other way round), so the
   connections stay in the kernel's backlog until one loop turns, and go to it. That is
   the kernel's own pull, at a millisecond's resolution. (Waiting while every loop is
   merely stuck would hold connections back from a machine that is only busy:
   measured, it cost 15 % more CPU per new connection and a tenth of the throughput.)
2. **Load**: connections handed over and not yet closed. A kept-alive connection sends
   more requests, so an even count is even work to come, and it is what keeps
   connections opened together spread exactly evenly.
3. **Requests in flight**, then round robin.

Nothing in the rank decays or is tuned to a workload: each part is a fact about the
worker at the moment of the pick, and each rule says why it predicts a wait.

packed, for more workers than CPUs
----------------------------------
With more workers than the CPUs they may use (C, pmx.cpus), spreading costs CPU: each
worker serves its share and sleeps, so nearly every request wakes a process whose caches
the others have filled since it last ran (docs/architecture.md, "More workers than
cores"). packed ranks as least-busy does, with two changes for a connection just
accepted, whose request is about to be served. The first C workers not held by their app
(a connection that blocks, a request for a path that blocks, held for over
``HELD_STUCK``, or full), holding no connection that has blocked its loop lately (in the
last 5 s: pmx.worker.blocks ``blocked``) and not *saturated* are *active*, and an active
worker comes before any other whatever its load. Packing bets that an active loop serves
the connection at once; a loop whose connections block now and then (heavy-tailed
durations) loses that bet whenever one does, while its mark, which goes at the
connection's next request that does not block, is off most of the time. Such connections
are gathered on few workers (pmx.master.rebalance), so the others stay clean to pack on;
when every worker holds one, packed is least-busy. Within the active ones, and then
among the others, least-busy's rank decides. A loop merely stuck stays active: with more
loops runnable than CPUs it most likely waits for a CPU, which a spare woken for the
connection would wait for too. A worker is saturated when every thread of its app's pool
is taken (pmx.worker.pool: a WSGI app's, where each request takes one, or anyio's, where
an ASGI app runs its synchronous code), counting each connection handed to it in the
same burst as a request about to take one: its loop turns, but a new request there may
wait for a thread while a spare worker's threads are idle (measured, 16 workers on 2
CPUs, 64 clients on a WSGI view sleeping 50 ms: packed without this served 3.9k of their
requests against least-busy's 9.0k, and 136 fast requests a second against 746; with it,
as many as least-busy). Connections handed back idle between two requests (a join, a
drain) are placed as least-busy places them, where connections are fewest. What packed
gives up: connections opened together are not spread evenly, and when a loop starts to
block more connections are already waiting in it than when they are spread
(docs/benchmarks.md has both).

To add a policy, write one class with a ``name``, ``ranks`` and ``share`` (and
``waits`` if it ever holds connections back) and list it in ``POLICIES``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

# A loop that has gone this long (seconds) without progress while it has work is stuck
# (see the module docstring). Workers stamp every 1 ms while busy (pmx.worker.process
# HEARTBEAT); three missed stamps are not jitter.
STUCK = 0.003
# Stuck for longer than this (seconds), a loop is *held*: by the app, not by a machine
# whose CPUs are all busy, which delays a runnable process by up to the scheduler's
# period (6 to 24 ms). Only when every worker is held does least-busy wait.
HELD_STUCK = 0.025


class Snapshot(NamedTuple):
    """One worker's state at the moment of a pick."""

    load: int  # connections handed over and not yet closed (unread in its inbox + open)
    inflight: int  # requests in flight
    stuck: float  # seconds its loop has made no progress while it had work (0: turning)
    blockers: int  # open connections whose last request blocked its loop
    full: bool = False  # at its fd budget: takes no connection (pmx.worker.capacity)
    holding: int = 0  # requests in flight expected to block its loop (pmx.worker.blocks)
    threads: int = 0  # its app's thread pool, 0: none (pmx.worker.pool)
    threads_taken: int = 0  # of which taken now
    blocked: int = 0  # open connections that have blocked its loop lately


# A Snapshot from a full 9-tuple without NamedTuple's Python-level __new__ (which fills
# in defaults): 0.1 µs instead of 0.6, per worker at every pick.
snapshot_of = functools.partial(tuple.__new__, Snapshot)


class Candidate(Protocol):
    @property
    def load(self) -> int: ...

    @property
    def full(self) -> bool: ...

    def snapshot(self, now: float) -> Snapshot: ...


C = TypeVar("C", bound=Candidate)


class Policy(Protocol):
    name: str
    live_load: bool
    watches_loops: bool
    evens_out: bool

    def ranks(self, candidates: Sequence[C], now: float) -> list[Any]: ...

    def waits(self, ranks: list[Any]) -> bool: ...

    def share(self, ranks: list[Any], count: int) -> list[int]: ...

    def wants(self, workers: int) -> None: ...

    def describe(self) -> str: ...

    def share_accepted(self, ranks: list[Any], count: int) -> list[int]: ...

    def pick(self, candidates: Sequence[C], now: float = 0.0) -> C | None: ...

    def spread(self, candidates: Sequence[C], count: int, now: float = 0.0) -> list[int]: ...


class _Base:
    """``pick`` and ``spread`` from ``ranks`` and ``share``; nobody waits."""

    name = ""
    # Ranks by the workers' live counts: each worker publishes every change of its load
    # (pmx.loadslot), not only ten times a second for status and metrics.
    live_load = True
    # Ranks by the state of each worker's loop: its workers watch for requests that
    # block (pmx.worker.blocks), and the dispatcher takes back what a stuck one left
    # unread.
    watches_loops = False
    # Kept-alive connections left uneven are evened out (pmx.master.rebalance ``even``).
    evens_out = True

    def ranks(self, candidates: Sequence[C], now: float) -> list[Any]:
        raise NotImplementedError

    def share(self, ranks: list[Any], count: int) -> list[int]:
        raise NotImplementedError

    def waits(self, ranks: list[Any]) -> bool:
        return False

    def share_accepted(self, ranks: list[Any], count: int) -> list[int]:
        """``share`` for connections just accepted (or left unread by a stuck worker),
        whose request is about to be served; ``share`` alone places connections handed
        back, idle between two requests. The same for every policy but packed."""
        return self.share(ranks, count)

    def wants(self, workers: int) -> None:
        """The app wants ``workers`` workers from now on (only ``auto`` minds)."""

    def describe(self) -> str:
        """The policy as the master's first log line names it."""
        return self.name

    def pick(self, candidates: Sequence[C], now: float = 0.0) -> C | None:
        if not candidates:
            return None
        counts = self.share(self.ranks(candidates, now), 1)
        return candidates[counts.index(1)]

    def spread(self, candidates: Sequence[C], count: int, now: float = 0.0) -> list[int]:
        return self.share(self.ranks(candidates, now), count)


class RoundRobin(_Base):
    """Each candidate in turn, whatever its load; a full one is skipped."""

    name = "round-robin"
    live_load = False  # takes no count into account

    def __init__(self) -> None:
        self.cursor = 0

    def ranks(self, candidates: Sequence[C], now: float) -> list[Any]:
        return [candidate.full for candidate in candidates]

    def waits(self, ranks: list[Any]) -> bool:
        return bool(ranks) and all(ranks)

    def share(self, ranks: list[Any], count: int) -> list[int]:
        size = len(ranks)
        counts = [0] * size
        if not size:
            return counts
        start = self.cursor % size
        turns = [(start + step) % size for step in range(size)]
        turns = [i for i in turns if not ranks[i]] or turns
        share, extra = divmod(count, len(turns))
        for step, index in enumerate(turns):
            counts[index] = share + (step < extra)
        if extra:
            self.cursor = turns[extra - 1] + 1
        return counts


class _Least(_Base):
    """The candidate with the lowest rank; ties go round robin from the cursor.

    A subclass says how to rank a candidate (``rank``) and how a rank changes when the
    candidate is handed one more connection (``bump``)."""

    def __init__(self) -> None:
        self.cursor = 0

    def rank(self, candidate: Any, now: float) -> Any:
        raise NotImplementedError

    bump: Callable[[Any], Any]

    def ranks(self, candidates: Sequence[C], now: float) -> list[Any]:
        rank = self.rank
        return [rank(candidate, now) for candidate in candidates]

    def share(self, ranks: list[Any], count: int) -> list[int]:
        return self._share(list(ranks), count, self.bump)

    def _share(self, ranks: list[Any], count: int, bump: Callable[[Any], Any]) -> list[int]:
        """``count`` picks of the lowest of ``ranks`` (changed in place), each rank
        ``bump``ed as its candidate is picked; how many each got."""
        counts = [0] * len(ranks)
        if not ranks:
            return counts
        for _ in range(count):
            index = self._lowest(ranks)
            ranks[index] = bump(ranks[index])
            counts[index] += 1
            self.cursor = index + 1
        return counts

    def _lowest(self, ranks: list[Any]) -> int:
        """Index of the lowest rank, the first one from the cursor on a tie."""
        size = len(ranks)
        start = self.cursor % size
        best_index, best = start, ranks[start]
        for step in range(1, size):
            index = (start + step) % size
            if ranks[index] < best:
                best_index, best = index, ranks[index]
        return best_index


class LeastConnections(_Least):
    """Fewest open connections (handed over and not yet closed); a full one last."""

    name = "least-conn"

    def rank(self, candidate: Any, now: float) -> tuple[bool, int]:
        return (candidate.full, int(candidate.load))

    def waits(self, ranks: list[Any]) -> bool:
        return bool(ranks) and all(full for full, _load in ranks)

    @staticmethod
    def bump(rank: tuple[bool, int]) -> tuple[bool, int]:
        return (rank[0], rank[1] + 1)


# least-busy's rank: (class, load, requests in flight). Classes:
TURNING, STUCK_NOW, BLOCKER, HELD = 0, 1, 2, 3


def busy_rank(s: Snapshot) -> tuple[int, int, int]:
    """least-busy's rank of one worker (the module docstring says why)."""
    if s.full or s.holding or s.stuck > HELD_STUCK:
        kind = HELD
    elif s.blockers:
        kind = BLOCKER
    elif s.stuck > STUCK:
        kind = STUCK_NOW
    else:
        kind = TURNING
    return (kind, s.load, s.inflight)


class LeastBusy(_Least):
    """Loops turning now first, then workers without a connection that blocks, then
    fewest connections, then fewest requests in flight; none while every loop is held
    (see the module docstring)."""

    name = "least-busy"
    watches_loops = True

    def rank(self, candidate: Any, now: float) -> tuple[int, int, int]:
        return busy_rank(candidate.snapshot(now))

    def ranks(self, candidates: Sequence[C], now: float) -> list[Any]:
        return [busy_rank(candidate.snapshot(now)) for candidate in candidates]

    def waits(self, ranks: list[Any]) -> bool:
        return all(rank[0] == HELD for rank in ranks)

    @staticmethod
    def bump(rank: tuple[int, int, int]) -> tuple[int, int, int]:
        kind, load, inflight = rank
        return (kind, load + 1, inflight)


class Packed(LeastBusy):
    """least-busy, but connections just accepted fill the first ``cores`` workers not
    held by their app nor saturated before any other (see the module docstring)."""

    name = "packed"
    evens_out = False  # its counts are uneven by design

    def __init__(self, cores: int = 1) -> None:
        super().__init__()
        self.cores = max(1, cores)

    def ranks(self, candidates: Sequence[C], now: float) -> list[Any]:
        """least-busy's rank of each, and the threads of its app's pool: all, taken."""
        ranks = []
        for candidate in candidates:
            s = candidate.snapshot(now)
            ranks.append((*busy_rank(s), s.threads, s.threads_taken, s.blocked))
        return ranks

    def share(self, ranks: list[Any], count: int) -> list[int]:
        return self._share(list(ranks), count, bump_pooled)

    def share_accepted(self, ranks: list[Any], count: int) -> list[int]:
        """Each connection is a request about to be in flight, so an active worker's
        pool may be saturated midway through a batch: then (and only then, not once
        per connection: this is the accept path) the active workers are chosen again."""
        ranks = list(ranks)
        counts = [0] * len(ranks)
        added = [0] * len(ranks)
        packed = packed_ranks(ranks, self.cores)
        for _ in range(count if ranks else 0):
            index = self._lowest(packed)
            packed[index] = bump_packed(packed[index])
            ranks[index] = bump_pooled(ranks[index])
            added[index] += 1
            counts[index] += 1
            self.cursor = index + 1
            _kind, _load, _inflight, threads, taken, _blocked = ranks[index]
            if not packed[index][1] and 0 < threads <= taken + added[index]:
                packed = packed_ranks(ranks, self.cores, added)
        return counts


class Auto(Packed):
    """packed while the app wants more workers than ``cores``, least-busy otherwise
    (see the module docstring). The ranks are packed's either way: least-busy's, then
    the pool's threads, so a tie least-busy leaves to round robin goes first to the
    worker with fewer threads taken (with no pool, or none taken, it is round robin)."""

    name = "auto"

    def __init__(self, cores: int = 1, workers: int = 1) -> None:
        super().__init__(cores)
        self.wants(workers)

    def wants(self, workers: int) -> None:
        self.workers = workers
        self.packing = workers > self.cores
        self.evens_out = not self.packing  # read at every look (pmx.master.rebalance)

    def describe(self) -> str:
        acting = Packed.name if self.packing else LeastBusy.name
        return f"{self.name}: {acting}, {self.workers} worker(s) on {self.cores} CPU(s)"

    def share_accepted(self, ranks: list[Any], count: int) -> list[int]:
        if self.packing:
            return super().share_accepted(ranks, count)
        return self.share(ranks, count)


def bump_packed(rank: tuple[bool, bool, int, int, int]) -> tuple[bool, bool, int, int, int]:
    held, spare, kind, load, inflight = rank
    return (held, spare, kind, load + 1, inflight)


# least-busy's, then threads: all, taken; then connections that blocked lately
PooledRank = tuple[int, int, int, int, int, int]


def bump_pooled(rank: PooledRank) -> PooledRank:
    """least-busy's ``bump`` of packed's rank, which also holds the pool's threads."""
    kind, load, inflight, threads, taken, blocked = rank
    return (kind, load + 1, inflight, threads, taken, blocked)


def packed_ranks(ranks: Sequence[PooledRank], cores: int,
                 added: Sequence[int] = ()) -> list[tuple[bool, bool, int, int, int]]:
    """packed's rank of each worker from its ``ranks``: (held by its app, spare, then
    least-busy's rank). The active workers are the first ``cores`` neither held, nor
    holding a connection that blocked lately, nor saturated, counting each connection
    ``added`` to one meanwhile as a request about to take a thread."""
    packed = []
    active = 0
    for index, (kind, load, inflight, threads, taken, blocked) in enumerate(ranks):
        held = kind >= BLOCKER
        busy = taken + (added[index] if added else 0)
        spare = held or blocked > 0 or 0 < threads <= busy or active >= cores
        active += not spare
        packed.append((held, spare, kind, load, inflight))
    return packed


Policy_ = RoundRobin | LeastConnections | LeastBusy | Packed | Auto
POLICIES: dict[str, type[Policy_]] = {
    Auto.name: Auto,
    RoundRobin.name: RoundRobin,
    LeastConnections.name: LeastConnections,
    LeastBusy.name: LeastBusy,
    Packed.name: Packed,
}


def make_policy(name: str, cores: int = 1, workers: int = 1) -> Policy_:
    """The policy called ``name``; ``cores``: the CPUs the workers may use (packed,
    auto); ``workers``: how many the app wants (auto)."""
    if name == Auto.name:
        return Auto(cores, workers)
    if name == Packed.name:
        return Packed(cores)
    return POLICIES[name]()
