"""Restart backoff for crashing workers: a pure schedule, no clock of its own.

The first restart after a crash waits ``initial`` seconds; each further crash in a row
doubles the wait up to ``cap``. A worker that stayed up ``reset_after`` seconds or more
before dying counts as healthy: the schedule starts over.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    initial: float = 0.1
    factor: float = 2.0
    cap: float = 15.0
    reset_after: float = 30.0
    failures: int = 0

    def on_exit(self, uptime: float) -> float:
        """Record a worker's exit after ``uptime`` seconds; return the delay before
        its replacement starts."""
        if uptime >= self.reset_after:
            self.failures = 0
        delay = min(self.cap, self.initial * self.factor**self.failures)
        if delay < self.cap:  # past the cap the count stops growing (no float overflow)
            self.failures += 1
        return delay
