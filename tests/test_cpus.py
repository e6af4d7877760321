"""``-i max``: the CPUs the process may use, from its affinity mask and its cgroup's
CPU quota (pmx.cpus). The cgroup files come from a fake file system (the tests cannot
make cgroups); the affinity is the real one, set on a real child process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pmx.cpus import cgroup_quota, quota_v1, quota_v2, usable_cpus

V2_MOUNT = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = ("32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup "
            "rw,cpu,cpuacct\n"
            "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n")


def fake(files: dict[str, str]):
    return files.get


@pytest.mark.parametrize(("text", "expect"), [
    ("max 100000\n", None),
    ("200000 100000\n", 2.0),
    ("150000 100000", 1.5),
    ("50000 100000", 0.5),
    ("", None),
    ("garbage", None),
    ("0 100000", None),
])
def test_quota_v2(text, expect):
    assert quota_v2(text) == expect


def test_quota_v1():
    assert quota_v1("-1\n", "100000\n") is None
    assert quota_v1("250000\n", "100000\n") == 2.5
    assert quota_v1("", "100000") is None


def v2_root(cpu_max: str) -> dict[str, str]:
    """A process in the root of a cgroup v2 mount (as in a container) with this quota."""
    return {
        "/proc/self/cgroup": "0::/\n",
        "/proc/self/mountinfo": V2_MOUNT,
        "/sys/fs/cgroup/cpu.max": cpu_max,
    }


@pytest.mark.parametrize(("cpu_max", "affinity", "expect"), [
    ("200000 100000\n", 64, 2),  # a container limited to 2 CPUs on a big host
    ("150000 100000\n", 64, 2),  # a fractional quota rounds up
    ("150000 100000\n", 1, 1),  # and the affinity caps it
    ("10000 100000\n", 8, 1),  # a tenth of a CPU: still one
    ("max 100000\n", 8, 8),  # no quota
])
def test_the_quota_caps_the_affinity(cpu_max, affinity, expect):
    assert usable_cpus(fake(v2_root(cpu_max)), affinity=lambda: affinity) == expect


def test_the_tightest_quota_along_the_ancestors_counts():
    files = {
        "/proc/self/cgroup": "0::/system.slice/app.service\n",
        "/proc/self/mountinfo": V2_MOUNT,
        "/sys/fs/cgroup/system.slice/app.service/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/system.slice/cpu.max": "300000 100000\n",
        "/sys/fs/cgroup/cpu.max": "max 100000\n",
    }
    assert cgroup_quota(fake(files)) == 3.0
    assert usable_cpus(fake(files), affinity=lambda: 16) == 3


def test_cgroup_v1_cpu_controller():
    files = {
        "/proc/self/cgroup": "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
        "/proc/self/mountinfo": V1_MOUNT,
        "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "400000\n",
        "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    }
    assert usable_cpus(fake(files), affinity=lambda: 32) == 4


def test_a_cgroup_namespace_shows_the_own_group_as_the_mount_root():
    # Inside a container with its own cgroup namespace, /proc/self/cgroup says "/" and
    # the limit is in the mount's top directory (mounted read-only).
    files = v2_root("100000 100000\n")
    files["/proc/self/mountinfo"] = "30 23 0:27 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"
    assert usable_cpus(fake(files), affinity=lambda: 4) == 1


def test_no_cgroup_files_leave_the_affinity():
    assert cgroup_quota(fake({})) is None
    assert usable_cpus(fake({}), affinity=lambda: 6) == 6


def test_this_machine_has_no_quota_below_its_affinity():
    # The real files of this machine parse (whatever they say) to at least one CPU.
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


def test_workers_max_follows_a_real_affinity_mask():
    """A child confined to one CPU (as ``taskset -c 0 pmx ...`` would be) reads 1."""
    code = "from pmx.settings import parse_workers; print(parse_workers('max'))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
        check=True)
    assert out.stdout.strip() == "1"
