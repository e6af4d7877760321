"""CPU and memory of the master's processes, sampled with psutil in one place.

``status`` (``pmx status``, ``describe``, ``monit``), the admin endpoint's ``/workers``
and ``/metrics``, and memory recycling (``--max-memory``) all read processes through one
``Sampler``. It keeps one ``psutil.Process`` per pid, so that a CPU percentage covers
the time since the previous sample of that pid, and forgets the pids it is told are gone.
"""

from __future__ import annotations

from collections.abc import Iterable

import psutil


class Sampler:
    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}

    def _process(self, pid: int) -> psutil.Process:
        proc = self._processes.get(pid)
        if proc is None:
            proc = self._processes[pid] = psutil.Process(pid)
            proc.cpu_percent(None)  # the first CPU sample only sets the baseline
        return proc

    def sample(self, pid: int) -> tuple[float | None, int | None]:
        """CPU percent since the previous sample of this pid (None the first time), and
        RSS in bytes; (None, None) for a process that is gone."""
        first = pid not in self._processes
        try:
            proc = self._process(pid)
            with proc.oneshot():
                cpu = None if first else proc.cpu_percent(None)
                return cpu, int(proc.memory_info().rss)
        except psutil.Error:
            self._processes.pop(pid, None)
            return None, None

    def rss(self, pid: int) -> int:
        """Resident memory in bytes (0 if the process is gone)."""
        try:
            return int(self._process(pid).memory_info().rss)
        except psutil.Error:
            self._processes.pop(pid, None)
            return 0

    def tree_rss(self, pid: int) -> int:
        """RSS of a process and all its children, in bytes (0 if it is gone)."""
        try:
            process = self._process(pid)
            total = process.memory_info().rss
            for child in process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            return int(total)
        except psutil.Error:
            self._processes.pop(pid, None)
            return 0

    def cpu_seconds(self, pid: int) -> float:
        """User and system CPU time used so far (0.0 if the process is gone)."""
        try:
            times = self._process(pid).cpu_times()
            return float(times.user + times.system)
        except psutil.Error:
            self._processes.pop(pid, None)
            return 0.0

    def keep_only(self, pids: Iterable[int]) -> None:
        """Forget every process but these (the others are gone)."""
        keep = set(pids)
        for pid in set(self._processes) - keep:
            del self._processes[pid]
