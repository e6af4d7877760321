"""The master's one process sampler (pmx.master.sampler), on real processes."""

from __future__ import annotations

import os
import subprocess
import sys

from pmx.master.sampler import Sampler


def test_cpu_is_measured_between_two_samples_of_a_pid():
    sampler = Sampler()
    cpu, rss = sampler.sample(os.getpid())
    assert cpu is None and rss is not None and rss > 0
    sum(range(200_000))
    cpu, rss = sampler.sample(os.getpid())
    assert cpu is not None and cpu >= 0.0 and rss is not None and rss > 0


def test_memory_and_cpu_reads_keep_the_cpu_baseline():
    sampler = Sampler()
    assert sampler.rss(os.getpid()) > 0
    assert sampler.cpu_seconds(os.getpid()) > 0
    assert sampler.sample(os.getpid())[0] is not None  # the reads above set the baseline


def test_a_tree_counts_the_children_and_a_gone_process_reads_as_nothing():
    sampler = Sampler()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert sampler.tree_rss(os.getpid()) > sampler.rss(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert sampler.sample(child.pid) == (None, None)
    assert sampler.rss(child.pid) == 0 and sampler.tree_rss(child.pid) == 0
    assert sampler.cpu_seconds(child.pid) == 0.0


def test_keep_only_forgets_the_other_pids():
    sampler = Sampler()
    sampler.sample(os.getpid())
    sampler.keep_only(set())
    assert sampler.sample(os.getpid())[0] is None  # measured from scratch again
