"""The master's admin endpoint: /health, /workers, /workers/<id>/health, /metrics."""

from __future__ import annotations

import json
import os
import signal

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, get, wait_for

FAST_HEALTH = ["--health-interval", "0.3", "--health-timeout", "0.3", "--health-fall", "2"]


def requests_by_class(admin: int) -> dict[str, float]:
    status, text = get(admin, "/metrics")
    assert status == 200
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "pmx_worker_requests":
            for sample in family.samples:
                if sample.name == "pmx_worker_requests_total":
                    key = sample.labels["status_class"]
                    totals[key] = totals.get(key, 0) + sample.value
    return totals


def test_metrics_parse_and_count_the_requests_sent(pmx_run):
    admin = free_port()
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--admin", f"127.0.0.1:{admin}")
    run.wait_serving(2)
    wait_for(lambda: requests_by_class(admin).get("2xx", 0) >= 1, 5, "the first report")
    before = requests_by_class(admin)
    for _ in range(50):
        assert get(run.port, "/pid")[0] == 200
    wait_for(lambda: requests_by_class(admin)["2xx"] == before["2xx"] + 50, 5,
             "the counters to show 50 more 2xx responses")
    after = requests_by_class(admin)
    assert after["4xx"] == after["5xx"] == 0
    families = {f.name: f for f in text_string_to_metric_families(get(admin, "/metrics")[1])}
    for name in ("pmx_request_duration_seconds", "pmx_worker_connections",
                 "pmx_worker_requests_in_flight", "pmx_worker_threads_taken",
                 "pmx_worker_rss_bytes",
                 "pmx_worker_cpu_seconds", "pmx_worker_healthy", "pmx_worker_restarts"):
        assert name in families, name
    count = sum(s.value for s in families["pmx_request_duration_seconds"].samples
                if s.name == "pmx_request_duration_seconds_count")
    assert count == after["2xx"]
    assert all(s.value > 0 for s in families["pmx_worker_rss_bytes"].samples)


def test_health_workers_and_a_live_probe(pmx_run):
    admin = free_port()
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--admin", f"127.0.0.1:{admin}",
                  *FAST_HEALTH)
    run.wait_serving(2)
    status, body = get(admin, "/health")
    assert status == 200 and json.loads(body)["in_rotation"] == 2
    workers = json.loads(get(admin, "/workers")[1])["workers"]
    assert sorted(w["pid"] for w in workers) == sorted(run.worker_pids())
    # The second look measures CPU since the first, the master's too.
    again = json.loads(get(admin, "/workers")[1])
    assert again["master_cpu"] is not None and all(w["cpu"] is not None for w in again["workers"])
    status, body = get(admin, "/workers/1/health")
    probe = json.loads(body)
    assert status == 200 and probe["probe"] == "pass" and probe["in_rotation"] is True
    assert get(admin, "/workers/9/health")[0] == 404
    assert get(admin, "/nope")[0] == 404
    # Freeze both workers: they leave the rotation and /health turns 503.
    pids = run.worker_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: get(admin, "/health")[0] == 503, 5, "/health to report 503")
        status, body = get(admin, "/workers/1/health")
        assert status == 503 and json.loads(body)["probe"] in ("timeout", "not ready")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: get(admin, "/health")[0] == 200, 10, "/health back to 200")


def test_a_worker_frozen_while_idle_leaves_the_rotation_before_its_probes_fail(pmx_run):
    """Issue 10, item 8: with the default health settings three failed probes took 5 s.
    A frozen worker stops stamping its load slot; after 1 s of that it is out."""
    import time

    admin = free_port()
    run = pmx_run("tests.apps.plain:app", "-i", "2", "--admin", f"127.0.0.1:{admin}")
    run.wait_serving(2)

    def health_of(worker_id: int) -> str:
        workers = json.loads(get(admin, "/workers")[1])["workers"]
        return next(w["health"] for w in workers if w["id"] == worker_id)

    wait_for(lambda: health_of(1) == "ok", 5, "worker #1 to pass a probe")
    pid = next(w["pid"] for w in json.loads(get(admin, "/workers")[1])["workers"]
               if w["id"] == 1)
    os.kill(pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        wait_for(lambda: health_of(1) == "failing", 5, "the frozen worker to be seen")
        assert time.monotonic() - frozen_at < 3.0
        assert json.loads(get(admin, "/health")[1])["in_rotation"] == 1
        for _ in range(10):
            assert int(get(run.port, "/pid")[1]) != pid
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: health_of(1) == "ok", 15, "the worker back in rotation")
    assert "has not turned its loop" in run.log()
