"""Why workers were replaced: counts per slot and per reason, and the last records.

Shown by ``pmx status`` (restarts per slot), ``pmx describe`` (the records) and
``/metrics`` (``pmx_worker_restarts_total`` by reason).
"""

from __future__ import annotations

import time
from typing import Any

from pmx.master.workers import Worker

KEPT = 50  # records kept for `pmx describe`


class History:
    def __init__(self) -> None:
        self.by_slot: dict[int, int] = {}
        self.by_reason: dict[str, int] = {}
        self.records: list[dict[str, Any]] = []

    def record(self, worker: Worker, reason: str, detail: str) -> None:
        """``worker`` leaves its slot for ``reason`` (crash, boot, signal, reload,
        memory, max-requests, health, scale)."""
        self.by_slot[worker.id] = self.by_slot.get(worker.id, 0) + 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        self.records.append({
            "time": time.time(), "worker": worker.id, "pid": worker.pid,
            "reason": reason, "detail": detail,
            "error": (worker.error.strip().splitlines() or [""])[-1],
        })
        del self.records[:-KEPT]
