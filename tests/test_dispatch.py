"""The dispatcher's closing of its copies of handed-off fds (real descriptors)."""

from __future__ import annotations

import os

import pytest

from pmx.master.dispatch import _close_all

BASE = 900  # fds BASE..BASE+5, placed there with dup2 so their numbers are known


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def six():
    source = os.open(os.devnull, os.O_RDONLY)
    fds = [os.dup2(source, BASE + i) for i in range(6)]
    os.close(source)
    yield fds
    for fd in fds:
        if is_open(fd):
            os.close(fd)


def test_a_consecutive_batch_is_closed_and_nothing_else(six):
    _close_all(six[1:5])
    assert [is_open(fd) for fd in six] == [True, False, False, False, False, True]


def test_a_gap_in_the_numbers_is_left_alone(six):
    _close_all([six[3], six[1]])  # not a whole range: the one in between is not ours
    assert [is_open(fd) for fd in six] == [True, False, True, False, True, True]


def test_a_single_fd(six):
    _close_all([six[2]])
    assert [is_open(fd) for fd in six] == [True, True, False, True, True, True]
