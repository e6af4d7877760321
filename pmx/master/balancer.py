"""Balancing policies: which ready worker gets the next connection.

A policy is a pure object: it looks only at the candidates' ``load`` (connections
handed to the worker and not yet closed, as the master last knew it) or ``busy`` score
and at its own memory of past picks. No sockets, no clocks, so each policy is
unit-tested with plain values. Candidates always come in the same (worker id) order.

``pick(candidates)`` chooses one worker for one connection. ``spread(candidates, n)``
shares out a batch of ``n`` connections accepted together: it returns how many each
candidate gets, exactly what ``n`` successive picks would give if every pick counted
its connection into the chosen worker's score, but reading each score only once.

To add a policy, write one class with a ``name``, a ``pick`` and a ``spread`` and list
it in ``POLICIES``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    @property
    def load(self) -> int: ...

    @property
    def busy(self) -> float: ...


C = TypeVar("C", bound=Candidate)


class Policy(Protocol):
    name: str

    def pick(self, candidates: Sequence[C]) -> C | None: ...

    def spread(self, candidates: Sequence[C], count: int) -> list[int]: ...


class RoundRobin:
    """Each candidate in turn, whatever its load."""

    name = "round-robin"

    def __init__(self) -> None:
        self.cursor = 0

    def pick(self, candidates: Sequence[C]) -> C | None:
        if not candidates:
            return None
        index = self.cursor % len(candidates)
        self.cursor = index + 1
        return candidates[index]

    def spread(self, candidates: Sequence[C], count: int) -> list[int]:
        size = len(candidates)
        if not size:
            return []
        share, extra = divmod(count, size)
        start = self.cursor % size
        counts = [share] * size
        for step in range(extra):
            counts[(start + step) % size] += 1
        self.cursor = start + extra
        return counts


class _Least:
    """The candidate with the lowest ``key``; ties go round robin, so an idle pool is
    still spread evenly."""

    name = ""
    key = ""

    def __init__(self) -> None:
        self.cursor = 0

    def pick(self, candidates: Sequence[C]) -> C | None:
        if not candidates:
            return None
        key = self.key
        index = self._lowest([getattr(candidate, key) for candidate in candidates])
        self.cursor = index + 1
        return candidates[index]

    def spread(self, candidates: Sequence[C], count: int) -> list[int]:
        if not candidates:
            return []
        key = self.key
        scores = [getattr(candidate, key) for candidate in candidates]
        counts = [0] * len(candidates)
        for _ in range(count):
            index = self._lowest(scores)
            scores[index] += 1
            counts[index] += 1
            self.cursor = index + 1
        return counts

    def _lowest(self, scores: list[float]) -> int:
        """Index of the lowest score, the first one from the cursor on a tie."""
        size = len(scores)
        start = self.cursor % size
        best_index, best = start, scores[start]
        for step in range(1, size):
            index = (start + step) % size
            if scores[index] < best:
                best_index, best = index, scores[index]
        return best_index


class LeastConnections(_Least):
    """Fewest open connections (handed over and not yet closed)."""

    name = "least-conn"
    key = "load"


class LeastBusy(_Least):
    """Lowest ``busy`` score: open connections plus requests in flight, plus how long
    the worker's loop has been stuck now and has been stuck recently (see
    ``Worker.busy``).

    A worker whose event loop is blocked reads nothing from its channel, so every
    connection handed to it counts against it at once; and a worker reports the moment
    it starts or finishes its only request, before the handler runs.
    """

    name = "least-busy"
    key = "busy"


Policy_ = RoundRobin | LeastConnections | LeastBusy
POLICIES: dict[str, type[Policy_]] = {
    RoundRobin.name: RoundRobin,
    LeastConnections.name: LeastConnections,
    LeastBusy.name: LeastBusy,
}


def make_policy(name: str) -> Policy_:
    return POLICIES[name]()
