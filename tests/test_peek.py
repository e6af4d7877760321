"""LoopPeek: whether a real process's main thread waits in epoll, read from
/proc/PID/syscall, against processes waiting in epoll, sleeping, running and gone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pmx.master.peek import LoopPeek
from tests.conftest import wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux /proc only")

CHILDREN = {
    # An event loop with nothing to do: the main thread waits in epoll.
    "epoll": "import asyncio; print(flush=True); asyncio.run(asyncio.sleep(60))",
    # Blocked, but not in epoll: a synchronous call holding the loop.
    "sleep": "import time; print(flush=True); time.sleep(60)",
    "running": "print(flush=True)\nwhile True: pass",
}


@pytest.fixture
def child():
    started: list[subprocess.Popen] = []

    def start(kind: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", CHILDREN[kind]], stdout=subprocess.PIPE)
        started.append(proc)
        assert proc.stdout is not None
        proc.stdout.readline()  # started: what follows is the call under test
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def peek_at(proc: subprocess.Popen) -> LoopPeek:
    peek = LoopPeek.open(proc.pid)
    if peek is None:
        pytest.skip("/proc/PID/syscall is not readable on this machine")
    return peek


def test_a_loop_waiting_for_io_is_seen_waiting(child):
    peek = peek_at(child("epoll"))
    try:
        wait_for(peek.waiting, 10, "the child's loop to wait in epoll")
    finally:
        peek.close()


@pytest.mark.parametrize("kind", ["sleep", "running"])
def test_a_loop_held_by_a_call_or_by_computing_is_not(child, kind):
    peek = peek_at(child(kind))
    try:
        for _ in range(200):
            assert not peek.waiting()
    finally:
        peek.close()


def test_a_process_that_is_gone_is_not_waiting(child):
    proc = child("epoll")
    peek = peek_at(proc)
    try:
        wait_for(peek.waiting, 10, "the child's loop to wait in epoll")
        proc.kill()
        proc.wait()
        assert not peek.waiting()
    finally:
        peek.close()
