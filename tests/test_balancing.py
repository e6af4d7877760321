"""Balancing policies seen from outside: which worker each new connection lands on."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.conftest import wait_for


def open_on_worker(port: int) -> tuple[http.client.HTTPConnection, str]:
    """A kept-alive connection and the id of the worker serving it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/env")
    return conn, json.loads(conn.getresponse().read())["PMX_WORKER_ID"]


@pytest.mark.parametrize("policy", ["round-robin", "least-conn"])
def test_where_connections_go_after_some_close(pmx_run, policy):
    """Four held connections, one per worker; close the last two opened. Round robin
    carries on its cycle (the first two workers again); least-conn picks the two
    workers that now have no connection."""
    run = pmx_run("tests.apps.plain:app", "-i", "4", "--balance", policy)
    run.wait_serving(4)
    held = [open_on_worker(run.port) for _ in range(4)]
    order = [worker_id for _conn, worker_id in held]
    assert sorted(order) == ["1", "2", "3", "4"]  # equal loads: one each, in turn
    for conn, _ in held[2:]:
        conn.close()
    wait_for(lambda: run.holds_connections() == 2, 5, "the workers to see two connections close")
    new = [open_on_worker(run.port) for _ in range(2)]
    expected = order[:2] if policy == "round-robin" else order[2:]
    assert sorted(w for _c, w in new) == sorted(expected)
    for conn, _ in [*held[:2], *new]:
        conn.close()


def test_least_busy_steers_around_a_blocked_worker(pmx_run):
    """One worker's loop is blocked by a 3 s synchronous call: least-busy sends every
    new connection to the other one, so none waits behind the blocked loop."""
    import threading
    import time

    from prometheus_client.parser import text_string_to_metric_families

    from tests.conftest import free_port, get

    admin = free_port()
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--balance", "least-busy",
                  "--admin", f"127.0.0.1:{admin}")
    run.wait_serving(2)

    def in_flight() -> float:
        families = text_string_to_metric_families(get(admin, "/metrics")[1])
        family = next(f for f in families if f.name == "pmx_worker_requests_in_flight")
        return sum(sample.value for sample in family.samples)

    blocker = threading.Thread(target=get, args=(run.port, "/block?ms=3000"))
    blocker.start()
    wait_for(lambda: in_flight() == 1, 5, "the blocking request to be in flight")
    started = time.monotonic()
    pids = {get(run.port, "/pid")[1] for _ in range(20)}
    elapsed = time.monotonic() - started
    blocker.join(10)
    assert len(pids) == 1  # all on the free worker
    assert elapsed < 2.0  # none waited behind the blocked loop
