"""pmx.worker.capacity: a worker's connection budget under its real fd limit."""

from __future__ import annotations

import logging
import resource

import pytest

from pmx.worker.capacity import Capacity, open_fds


@pytest.fixture
def limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def set_soft(value: int) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (value, hard))

    yield set_soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_budget_is_the_limit_less_what_is_open_less_the_reserve(limit, caplog):
    limit(open_fds() + 100)
    capacity = Capacity(reserve=30)
    assert capacity.connections == 100 - 30 + (capacity.base - open_fds())
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        assert not capacity.full(capacity.connections - 1)
        assert capacity.full(capacity.connections)
        assert capacity.full(capacity.connections + 5)  # said once, not again
        assert not capacity.full(0)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"{capacity.connections} open connections, near the limit of "
        f"{capacity.limit} open files",
        "0 open connections",
    ]


def test_a_limit_changed_from_outside_is_seen_at_the_next_refresh(limit):
    capacity = Capacity(reserve=10)
    before = capacity.connections
    limit(capacity.limit - 50)
    capacity.refresh()
    assert capacity.connections == before - 50
