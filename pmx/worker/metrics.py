"""Request metrics counted in the worker: responses by status class and a duration
histogram. The worker reports them to its master once a second (channel ``M``); the
master serves them on its admin endpoint's /metrics.

Health probes sent by the master are marked in their scope and not counted.
"""

from __future__ import annotations

import time
from typing import Any

from pmx.channel import BUCKETS

PROBE_EXTENSION = "pmx.probe"


class RequestMetrics:
    def __init__(self) -> None:
        self.by_class = {f"{n}xx": 0 for n in range(1, 6)}
        self.buckets = [0] * len(BUCKETS)  # cumulative counts, as Prometheus wants them
        self.count = 0
        self.sum = 0.0

    def observe(self, status: int, seconds: float) -> None:
        key = f"{status // 100}xx"
        if key in self.by_class:
            self.by_class[key] += 1
        self.count += 1
        self.sum += seconds
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.buckets[index] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"by_class": self.by_class, "buckets": self.buckets,
                "count": self.count, "sum": self.sum}


def instrument(app: Any, metrics: RequestMetrics) -> Any:
    """Wrap an ASGI app so every HTTP request it answers is counted."""

    async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or PROBE_EXTENSION in scope.get("extensions", {}):
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before responding

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await app(scope, receive, watch)
        finally:
            metrics.observe(status, time.perf_counter() - started)

    return counted
