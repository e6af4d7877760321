"""The settings of one benchmark run: plain data, saved with the results."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DAEMON_SCENARIOS = ("reload", "memory", "status")


@dataclass
class Config:
    workers: list[int] = field(default_factory=lambda: [2, 4])
    duration: int | None = None  # seconds per measurement; None: each scenario's own
    repeats: int = 3
    threads: int = 1  # wrk threads per client
    warmup: int = 2  # seconds of keep-alive load on each server after it starts
    quick: bool = False
    only: list[str] = field(default_factory=list)  # families or scenarios; empty: all
    daemon: list[str] = field(default_factory=lambda: list(DAEMON_SCENARIOS))
    max_memory: str = "64M"
    leak_rate: float = 40.0
    mem_restarts: int = 4
    mem_timeout: int = 40
    busy_cores: float = 0.3
    retries: int = 2
    quiet_wait: float = 60.0

    def seconds(self, scenario_duration: int) -> int:
        return self.duration or scenario_duration

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Config:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
