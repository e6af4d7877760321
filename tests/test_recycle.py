"""Workers replaced while the app runs: memory limit, request limit, health checks.
Every replacement starts the new worker first; no request fails."""

from __future__ import annotations

import json
import os
import signal
import time

from tests.conftest import SteadyLoad, free_port, get, ready_pids, wait_for

LEAKY = "tests.apps.leaky:app"
FAST_HEALTH = ["--health-interval", "0.3", "--health-timeout", "0.3", "--health-fall", "3",
               "--health-rise", "2"]


def reasons(pmx, name: str) -> list[str]:
    return [h["reason"] for h in json.loads(pmx.ok("describe", name, "--json"))["history"]]


def test_memory_limit_replaces_leaking_workers(pmx):
    port = free_port()
    pmx.ok("start", LEAKY, "-i", "2", "--name", "leak", "--bind", f"127.0.0.1:{port}",
           "--max-memory", "80M", "--memory-interval", "0.2")
    first = ready_pids(pmx.app("leak"))
    with SteadyLoad(port, "/leak", clients=2, keep_alive=1) as load:
        wait_for(lambda: reasons(pmx, "leak").count("memory") >= 2, 60, "two memory restarts")
        load.wait_served(20)
    assert load.failures == []
    assert first - ready_pids(pmx.app("leak"))  # old pids gone
    # Once the leak stops, every worker over the limit is replaced. (Not at once: on a
    # loaded machine one may have leaked far past it while its replacement booted.)
    wait_for(lambda: all(w["memory"] < 200 * 1024 * 1024 for w in pmx.app("leak")["workers"]),
             30, "every worker under 200 MiB")


def test_max_requests_recycles_workers(pmx):
    port = free_port()
    pmx.ok("start", LEAKY, "-i", "2", "--name", "web", "--bind", f"127.0.0.1:{port}",
           "--max-requests", "60", "--max-requests-jitter", "10")
    first = ready_pids(pmx.app("web"))
    with SteadyLoad(port, "/pid", clients=3, keep_alive=1) as load:
        wait_for(lambda: reasons(pmx, "web").count("max-requests") >= 2, 60,
                 "two max-requests restarts")
        load.wait_served(20)
    assert load.failures == []
    assert ready_pids(pmx.app("web")) != first


def test_stopped_worker_leaves_rotation_then_is_replaced(pmx):
    port = free_port()
    pmx.ok("start", LEAKY, "-i", "3", "--name", "web", "--bind", f"127.0.0.1:{port}",
           "--graceful-timeout", "2", *FAST_HEALTH)
    victim = min(ready_pids(pmx.app("web")))
    os.kill(victim, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        log = pmx.home / "logs" / "web.err.log"
        # Whichever comes first: three failed probes, or its load slot not stamped
        # for 1 s (idle and frozen).
        wait_for(lambda: f"(pid {victim}) failed 3 health checks" in log.read_text()
                 or f"(pid {victim}) has not turned its loop" in log.read_text(), 5,
                 "the stopped worker to leave the rotation")
        assert time.monotonic() - stopped_at <= 3 * 0.3 + 0.3 + 1
        with SteadyLoad(port, "/pid", clients=3, keep_alive=1) as load:
            load.wait_served(100)
            assert str(victim) not in load.bodies
            wait_for(lambda: victim not in {w["pid"] for w in pmx.app("web")["workers"]},
                     15, "the stopped worker to be replaced and killed")
            wait_for(lambda: len(ready_pids(pmx.app("web"))) == 3, 10, "three ready workers")
            load.wait_served(50)
        assert load.failures == []
        assert "health" in reasons(pmx, "web")
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_health_path_keeps_a_sick_worker_out_until_it_recovers(pmx, tmp_path):
    port = free_port()
    (tmp_path / "2").touch()  # worker 2's /health answers 503
    pmx.ok("start", LEAKY, "-i", "2", "--name", "web", "--bind", f"127.0.0.1:{port}",
           "--health-path", "/health", "--env", f"SICK_DIR={tmp_path}", *FAST_HEALTH)
    app = pmx.app("web")
    health = {w["id"]: w["health"] for w in app["workers"]}
    assert health[1] == "ok" and health[2] != "ok"
    healthy_pid = next(w["pid"] for w in app["workers"] if w["id"] == 1)
    assert {int(get(port, "/pid")[1]) for _ in range(10)} == {healthy_pid}
    (tmp_path / "2").unlink()
    wait_for(lambda: len({int(get(port, "/pid")[1]) for _ in range(6)}) == 2, 10,
             "worker 2 back in rotation")
    assert {w["health"] for w in pmx.app("web")["workers"]} == {"ok"}


def test_replacements_that_never_pass_a_probe_do_not_pile_up(pmx, tmp_path):
    port = free_port()
    pmx.ok("start", LEAKY, "-i", "1", "--name", "web", "--bind", f"127.0.0.1:{port}",
           "--health-path", "/health", "--env", f"SICK_DIR={tmp_path}", "--ready-timeout", "1",
           *FAST_HEALTH)
    (tmp_path / "1").touch()  # from now on worker 1 (and any replacement) is sick
    log = pmx.home / "logs" / "web.err.log"
    wait_for(lambda: log.read_text().count("could not replace a worker (next try in") >= 2,
             30, "two failed replacements")
    workers = [title for title in pmx.titles() if "worker" in title]
    assert len(workers) <= 2  # the sick one and at most one candidate
