"""Health of one worker as seen by its master: a pure state machine, no I/O.

Probes pass or fail (a reply saying unhealthy, or no reply within the timeout).
``fall`` failures in a row take a healthy worker out of rotation; ``rise`` passes in a
row bring it back. A new worker starts ``PENDING``: it joins the rotation on its first
pass, as HAProxy's ``slowstart``-less checks do. A worker ``FAILING`` for ``replace_after``
probes in a row is due for replacement. A worker seen frozen while idle (``stall``) is
``FAILING`` at once, as after ``fall`` failures.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Health(enum.Enum):
    PENDING = "unknown"  # ready but not yet checked
    OK = "ok"
    FAILING = "failing"


@dataclass
class HealthCheck:
    fall: int = 3
    rise: int = 2
    replace_after: int = 6
    state: Health = Health.PENDING
    passes: int = 0  # in a row
    failures: int = 0  # in a row

    @property
    def in_rotation(self) -> bool:
        return self.state is Health.OK

    @property
    def due_for_replacement(self) -> bool:
        return self.state is Health.FAILING and self.failures >= self.replace_after

    def stall(self) -> Health:
        """The worker's loop is seen not turning while idle (its load slot is not
        stamped): as bad as ``fall`` failed probes in a row, at once."""
        self.passes, self.failures = 0, max(self.failures + 1, self.fall)
        self.state = Health.FAILING
        return self.state

    def record(self, passed: bool) -> Health:
        """Record one probe result; return the new state."""
        if passed:
            self.passes, self.failures = self.passes + 1, 0
            if self.state is Health.PENDING or (
                self.state is Health.FAILING and self.passes >= self.rise
            ):
                self.state = Health.OK
        else:
            self.passes, self.failures = 0, self.failures + 1
            if self.state is Health.OK and self.failures >= self.fall:
                self.state = Health.FAILING
            elif self.state is Health.PENDING and self.failures >= self.fall:
                self.state = Health.FAILING
        return self.state
