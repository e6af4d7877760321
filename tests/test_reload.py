"""Rolling reloads under load: no failed request, new code served, broken code refused."""

from __future__ import annotations

import json
import signal
import textwrap

import pytest

from tests.conftest import SteadyLoad, free_port, get, ready_pids, wait_for

APP = textwrap.dedent('''
    import os

    VERSION = "{version}"


    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({{"type": message["type"] + ".complete"}})
                if message["type"] == "lifespan.shutdown":
                    return
        body = f"{{VERSION}} {{os.getpid()}}".encode()
        await send({{"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]}})
        await send({{"type": "http.response.body", "body": body}})
''')


def write_app(directory, version: str) -> None:
    (directory / "versioned.py").write_text(APP.format(version=version))


def start_versioned(pmx, directory, workers: int, *extra: str) -> tuple[int, set[int]]:
    """Version v1 of the app as 'web' under the daemon: its port and worker pids."""
    write_app(directory, "v1")
    port = free_port()
    pmx.ok("start", "versioned:app", "-i", str(workers), "--name", "web", "--bind",
           f"127.0.0.1:{port}", "--app-dir", str(directory), *extra)
    return port, ready_pids(pmx.app("web"))


def test_reload_under_load_serves_new_code_and_loses_nothing(pmx, tmp_path):
    port, old = start_versioned(pmx, tmp_path, 4)
    with SteadyLoad(port, "/", clients=4, keep_alive=4) as load:
        load.wait_served(300)
        write_app(tmp_path, "v2")
        out = pmx.ok("reload", "web")
        load.wait_served(300)
    assert load.failures == []
    new = ready_pids(pmx.app("web"))
    assert len(new) == 4 and not new & old
    assert out.strip() == f"reloaded web: new pids {' '.join(map(str, sorted(new)))}"
    assert {get(port, "/")[1].split()[0] for _ in range(8)} == {"v2"}
    versions = {body.split()[0] for body in load.bodies}
    assert versions == {"v1", "v2"}
    history = json.loads(pmx.ok("describe", "web", "--json"))["history"]
    assert sorted(h["pid"] for h in history if h["reason"] == "reload") == sorted(old)


def test_reload_with_broken_code_keeps_the_old_workers(pmx, tmp_path):
    port, old = start_versioned(pmx, tmp_path, 2)
    with SteadyLoad(port, "/", clients=2, keep_alive=2) as load:
        load.wait_served(100)
        (tmp_path / "versioned.py").write_text("def broken(:\n")
        result = pmx("reload", "web")
        load.wait_served(100)
    assert load.failures == []
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith("Error: worker #1 (pid ") and "failed to start: SyntaxError" in first
    assert ready_pids(pmx.app("web")) == old
    assert {body.split()[0] for body in load.bodies} == {"v1"}
    assert pmx.app("web")["state"] == "running"


def test_sighup_reloads_pmx_run(pmx_run):
    run = pmx_run("tests.apps.plain:app", "-i", "2")
    run.wait_serving(2)
    old = run.worker_pids()
    run.signal(signal.SIGHUP)
    wait_for(lambda: "reload of tests.apps.plain done" in run.log(), 15, "the reload")
    wait_for(lambda: run.worker_pids().isdisjoint(old) and len(run.worker_pids()) == 2,
             10, "the old workers to exit")
    served = {int(get(run.port, "/pid")[1]) for _ in range(4)}
    assert served == run.worker_pids()


def test_watch_reloads_after_an_edit(pmx_run, tmp_path):
    write_app(tmp_path, "v1")
    run = pmx_run("versioned:app", "-i", "2", "--app-dir", str(tmp_path),
                  f"--watch={tmp_path}")
    run.wait_serving(2)
    old = run.worker_pids()
    assert get(run.port, "/")[1].startswith("v1 ")
    (tmp_path / "notes.txt").write_text("not python: ignored")
    (tmp_path / "__pycache__").mkdir(exist_ok=True)
    write_app(tmp_path, "v2")
    wait_for(lambda: get(run.port, "/")[1].startswith("v2 ") and
             get(run.port, "/")[1].startswith("v2 "), 20, "the edit to be served")
    wait_for(lambda: run.worker_pids().isdisjoint(old), 10, "the old workers to exit")
    log = run.log()
    assert "changed: versioned.py" in log
    assert log.count("reload of versioned done") == 1


@pytest.mark.parametrize("rebalance", ["--rebalance=all", "--rebalance=off"])
def test_reload_with_a_paced_keep_alive_client(pmx, tmp_path, rebalance):
    """A client reusing one connection with pauses between requests: no request fails.
    With rebalancing its connection moves to a new worker and is never closed; without,
    the old worker closes it right after a response (Connection: close), never while
    the client may be sending."""
    import http.client
    import threading

    port, _ = start_versioned(pmx, tmp_path, 2, rebalance)
    failures: list[Exception] = []
    closes = [0]
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                if response.getheader("connection") == "close":
                    closes[0] += 1
            except Exception as exc:  # noqa: BLE001
                failures.append(exc)
                conn.close()
            stop.wait(0.15)  # the client's own pace, not a wait for pmx

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    pmx.ok("reload", "web")
    pmx.ok("reload", "web")
    stop.set()
    for thread in threads:
        thread.join(10)
    assert failures == []
    if rebalance == "--rebalance=all":
        assert closes[0] == 0  # handed on to the new workers instead
    else:
        assert closes[0] >= 1  # connections to draining workers were closed after a response


def worker_ids(admin: int) -> list[tuple[int, str]]:
    return sorted((w["id"], w["state"]) for w in json.loads(get(admin, "/workers")[1])["workers"])


def test_a_worker_killed_while_its_replacement_boots_leaves_one_worker_in_its_slot(
        pmx_run, tmp_path):
    """Reload with a slow lifespan startup; the old worker #1 is killed while its
    replacement boots. The replacement alone fills slot 1: no respawn beside it."""
    import os

    flag = tmp_path / "slow"
    admin = free_port()
    run = pmx_run("tests.apps.slowstart:app", "-i", "2", "--admin", f"127.0.0.1:{admin}",
                  env={"SLOW_START_FLAG": str(flag)})
    run.wait_serving(2)
    old = {w["id"]: w["pid"] for w in json.loads(get(admin, "/workers")[1])["workers"]}
    flag.touch()  # replacements now boot until the flag goes
    run.signal(signal.SIGHUP)
    wait_for(lambda: len(run.worker_pids()) == 3, 10, "the replacement of #1 to start")
    os.kill(old[1], signal.SIGKILL)
    wait_for(lambda: f"worker #1 (pid {old[1]}) died" in run.log(), 10, "the master to see it")
    flag.unlink()
    wait_for(lambda: "reload of tests.apps.slowstart done" in run.log(), 30, "the reload")
    wait_for(lambda: worker_ids(admin) == [(1, "ready"), (2, "ready")], 10,
             "one ready worker in each slot")
    assert len(run.worker_pids()) == 2
    assert not set(old.values()) & run.worker_pids()
