"""Balancing policies: which ready worker gets the next connection.

A policy is a pure object: ``pick(candidates)`` looks only at the candidates' ``load``
(connections handed to the worker and not yet closed, as the master last knew it)
and at its own memory of past picks. No sockets, no clocks, so each policy is
unit-tested with plain values. The master calls ``pick`` once per accepted connection
with the workers currently in rotation, always in the same (worker id) order, and
counts the connection into the chosen worker's load before the next pick.

To add a policy, write one class with a ``name`` and a ``pick`` and list it in
``POLICIES``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    @property
    def load(self) -> int: ...


C = TypeVar("C", bound=Candidate)


class Policy(Protocol):
    name: str

    def pick(self, candidates: Sequence[C]) -> C | None: ...


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


class LeastConnections:
    """The candidate with the fewest open connections; ties go round robin, so an
    idle pool is still spread evenly."""

    name = "least-conn"

    def __init__(self) -> None:
        self.cursor = 0

    def pick(self, candidates: Sequence[C]) -> C | None:
        count = len(candidates)
        if not count:
            return None
        start = self.cursor % count
        best_index = start
        best_load = candidates[start].load
        for step in range(1, count):
            index = (start + step) % count
            load = candidates[index].load
            if load < best_load:
                best_index, best_load = index, load
        self.cursor = best_index + 1
        return candidates[best_index]


POLICIES: dict[str, type[RoundRobin] | type[LeastConnections]] = {
    RoundRobin.name: RoundRobin,
    LeastConnections.name: LeastConnections,
}


def make_policy(name: str) -> RoundRobin | LeastConnections:
    return POLICIES[name]()
