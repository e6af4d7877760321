"""How many CPUs this process may use: the count ``-i max`` starts a worker for.

``os.cpu_count()`` counts the machine's CPUs, and a process may be held to fewer in two
ways. Its affinity mask (``taskset``, a cpuset, Kubernetes' static CPU manager) names
the CPUs it may run on: ``os.sched_getaffinity``. A CPU quota on its cgroup (``docker
run --cpus 2``, a Kubernetes CPU limit, systemd's ``CPUQuota=``) caps the CPU time it
gets per period, on however many CPUs it runs: a container limited to 2 CPUs on a
64-core host sees 64 and gets 2. Workers beyond what it gets only wait for a CPU and
cost memory and cache (docs/architecture.md, "More workers than cores").

The usable count is the smaller of the two, the quota rounded up (1.5 CPUs: 2), and at
least 1. The quota is the tightest along the process's cgroup and its ancestors (a
limit on a parent caps every child): cgroup v2's ``cpu.max`` (``QUOTA PERIOD`` or
``max PERIOD``), or v1's ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (-1: none).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath

Reader = Callable[[str], "str | None"]  # a file's text, or None if it cannot be read


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read()
    except OSError:
        return None


def quota_v2(cpu_max: str) -> float | None:
    """CPUs a cgroup v2 ``cpu.max`` allows (``"150000 100000"``: 1.5); None: no limit."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def quota_v1(quota_us: str, period_us: str) -> float | None:
    """CPUs a cgroup v1 CFS quota allows (``-1``: no limit, None)."""
    try:
        quota, period = int(quota_us), int(period_us)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _mounts(mountinfo: str) -> Iterator[tuple[str, str, str, set[str]]]:
    """(root, mount point, filesystem type, super options) of each line of
    /proc/self/mountinfo."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        tail = line.split(" - ", 1)[1].split()
        if len(tail) < 3:
            continue
        yield fields[3], fields[4], tail[0], set(tail[2].split(","))


def _dirs(mount_root: str, mount_point: str, group: str) -> Iterator[str]:
    """The directories of ``group`` and its ancestors under a cgroup mount, deepest
    first. A mount whose root is ``group`` itself or one of its ancestors (a cgroup
    namespace shows the process's own group as /) shows the part below that root."""
    path = PurePosixPath(group)
    root = PurePosixPath(mount_root)
    if path != root and root not in path.parents:
        path = root  # the group is outside what this mount shows: its root is the nearest
    while True:
        yield str(PurePosixPath(mount_point) / path.relative_to(root))
        if path == root:
            return
        path = path.parent


def cgroup_quota(read: Reader = _read) -> float | None:
    """The tightest CPU quota on this process's cgroup or an ancestor; None: none."""
    groups: dict[str, str] = {}  # controller ("" for v2) -> the group's path
    for line in (read("/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                groups[controller] = parts[2]
    found: list[float] = []
    for root, point, fstype, options in _mounts(read("/proc/self/mountinfo") or ""):
        if fstype == "cgroup2" and "" in groups:
            for directory in _dirs(root, point, groups[""]):
                limit = quota_v2(read(f"{directory}/cpu.max") or "")
                if limit is not None:
                    found.append(limit)
        elif fstype == "cgroup" and "cpu" in options and "cpu" in groups:
            for directory in _dirs(root, point, groups["cpu"]):
                limit = quota_v1(read(f"{directory}/cpu.cfs_quota_us") or "",
                                 read(f"{directory}/cpu.cfs_period_us") or "")
                if limit is not None:
                    found.append(limit)
    return min(found) if found else None


def usable_cpus(read: Reader = _read,
                affinity: Callable[[], int] | None = None) -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's quota."""
    if affinity is not None:
        count = affinity()
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_quota(read)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)
