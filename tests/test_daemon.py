"""The daemon and its verbs, for real: a daemon per test in a temporary PMX_HOME."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import threading
import time

import psutil
import pytest

from pmx.cpus import usable_cpus
from tests.conftest import PMX, ROOT, SteadyLoad, free_port, get, ready_pids, wait_for

PLAIN = "tests.apps.plain:app"


def test_start_two_apps_status_and_control_socket(pmx):
    port_a, port_b = free_port(), free_port()
    # Round robin: every worker answers one of count * 2 requests (the default packs 4
    # workers onto the CPUs of a smaller machine).
    out = pmx.ok("start", PLAIN, "-i", "4", "--name", "a", "--bind", f"127.0.0.1:{port_a}",
                 "--balance", "round-robin")
    assert "a " in out and "ready" in out
    pmx.ok("start", PLAIN, "-i", "2", "--name", "b", "--bind", f"127.0.0.1:{port_b}")
    status = pmx.status()
    assert status["version"] == 1
    apps = {a["name"]: a for a in status["apps"]}
    assert apps["a"]["state"] == apps["b"]["state"] == "running"
    for name, port, count in (("a", port_a, 4), ("b", port_b, 2)):
        pids = ready_pids(apps[name])
        assert len(pids) == count
        assert all(psutil.pid_exists(pid) for pid in pids)
        served = {int(get(port, "/pid")[1]) for _ in range(count * 2)}
        assert served == pids
    mode = stat.S_IMODE(os.stat(pmx.home / "pmx.sock").st_mode)
    assert mode == 0o600
    titles = {title.strip() for title in pmx.titles()}
    assert "pmx: daemon" in titles
    assert f"pmx: master a 127.0.0.1:{port_a}" in titles


def test_stop_restart_delete_kill_leave_nothing_behind(pmx):
    port = free_port()
    pmx.ok("start", PLAIN, "-i", "2", "--name", "web", "--bind", f"127.0.0.1:{port}")
    before = ready_pids(pmx.app("web"))
    pmx.ok("stop", "web")
    assert pmx.app("web")["state"] == "stopped"
    assert not any(psutil.pid_exists(p) for p in before)
    with pytest.raises(OSError):
        get(port, "/pid", timeout=2)  # the port is released
    pmx.ok("restart", "web")
    after = ready_pids(pmx.app("web"))
    assert len(after) == 2 and not after & before
    assert get(port, "/pid")[0] == 200
    pmx.ok("delete", "web")
    assert pmx.status()["apps"] == []
    assert not any(psutil.pid_exists(p) for p in after)
    pmx.ok("start", PLAIN, "--name", "again", "--bind", f"127.0.0.1:{port}")
    procs = pmx.processes()
    assert len(procs) == 3  # daemon, master, worker
    out = pmx.ok("kill")
    assert "stopped 1 app(s) and the daemon" in out
    wait_for(lambda: not any(p.is_running() for p in procs), 10, "every pmx process to exit")
    assert not (pmx.home / "pmx.sock").exists()


def test_save_kill_resurrect(pmx):
    ports = {"one": free_port(), "two": free_port()}
    for name, port in ports.items():
        pmx.ok("start", PLAIN, "-i", "2", "--name", name, "--bind", f"127.0.0.1:{port}",
               "--balance", "least-conn")
    assert "saved 2 app(s)" in pmx.ok("save")
    pmx.ok("kill")
    wait_for(lambda: not pmx.processes(), 10, "the daemon to exit")
    pmx.ok("resurrect")
    apps = {a["name"]: a for a in pmx.status()["apps"]}
    assert set(apps) == {"one", "two"}
    for name, port in ports.items():
        assert apps[name]["bind"] == f"127.0.0.1:{port}"
        assert apps[name]["balance"] == "least-conn"
        assert len(ready_pids(apps[name])) == 2
        assert get(port, "/pid")[0] == 200


def test_killed_master_is_restarted_and_no_request_is_refused(pmx):
    port = free_port()
    pmx.ok("start", PLAIN, "-i", "2", "--name", "web", "--bind", f"127.0.0.1:{port}")
    master = pmx.app("web")["master_pid"]
    with SteadyLoad(port) as load:
        load.wait_served(20)
        os.kill(master, signal.SIGKILL)

        def restarted() -> bool:
            app = pmx.app("web")
            return app["master_pid"] not in (None, master) and len(ready_pids(app)) == 2

        wait_for(restarted, 15, "a new master with two ready workers")
        load.wait_served(20)
    # The daemon keeps the listening socket: nothing is refused while the master is
    # down. A connection the master had accepted but not yet handed to a worker at the
    # instant of SIGKILL dies with it (a reset): at most one per client thread.
    assert not [f for f in load.failures if isinstance(f, ConnectionRefusedError)]
    assert len(load.failures) <= 4, load.failures
    assert pmx.app("web")["restarts"] == 1


def test_logs_follow_shows_new_lines(pmx):
    port = free_port()
    pmx.ok("start", PLAIN, "--name", "web", "--bind", f"127.0.0.1:{port}")
    follower = subprocess.Popen(
        [*PMX, "logs", "web", "--follow", "--lines", "0"], cwd=ROOT, env=pmx.env,
        stdout=subprocess.PIPE, text=True,
    )
    try:
        lines: list[str] = []

        def read() -> None:
            for line in follower.stdout:  # type: ignore[union-attr]
                lines.append(line)

        threading.Thread(target=read, daemon=True).start()
        marker = f"/pid?marker={time.monotonic_ns()}"
        # Requests until the follower shows one (it may start after the first).
        wait_for(
            lambda: get(port, marker) and any(marker in line for line in lines),
            10, "the access log line in logs --follow",
        )
        line = next(line for line in lines if marker in line)
        assert "[#1]" in line and line[:4].isdigit()  # timestamp, then worker id
    finally:
        follower.kill()
        follower.wait()


def test_scale_under_load_loses_nothing(pmx):
    port = free_port()
    pmx.ok("start", PLAIN, "-i", "4", "--name", "web", "--bind", f"127.0.0.1:{port}")
    with SteadyLoad(port, "/slow?ms=20", clients=6) as load:
        for wanted in (2, 6):
            pmx.ok("scale", "web", str(wanted))
            wait_for(
                lambda n=wanted: len(pmx.app("web")["workers"]) == n
                and len(ready_pids(pmx.app("web"))) == n,
                20, f"{wanted} ready workers and no draining one",
            )
            load.wait_served(30)
    assert load.failures == []
    assert sorted(w["id"] for w in pmx.app("web")["workers"]) == [1, 2, 3, 4, 5, 6]
    history = json.loads(pmx.ok("describe", "web", "--json"))["history"]
    assert sorted(h["worker"] for h in history if h["reason"] == "scale") == [3, 4]


def test_start_failing_app_is_errored(pmx):
    result = pmx("start", "tests.apps.broken_import:app", "--name", "bad",
                 "--bind", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith(
        'Error: app "tests.apps.broken_import:app" failed to start: '
        "RuntimeError: boom: cannot import this app"
    )
    assert "broken_import.py" in result.stderr  # the traceback tail follows
    app = pmx.app("bad")
    assert app["state"] == "errored" and app["workers"] == []
    assert "boom" in app["error"]


def test_bad_input_messages(pmx, tmp_path):
    port = free_port()
    pmx.ok("start", PLAIN, "--name", "web", "--bind", f"127.0.0.1:{port}")
    cases = [
        (("stop", "nope"), "Error: no app named 'nope'; 'pmx status' lists the apps."),
        (("start", PLAIN, "--name", "web", "--bind", f"127.0.0.1:{free_port()}"),
         "Error: an app named 'web' already exists; use 'pmx restart web' or choose "
         "another --name."),
        (("start", PLAIN, "--name", "other", "--bind", f"127.0.0.1:{port}"),
         f"Error: app 'web' already listens on 127.0.0.1:{port}."),
        (("scale", "web", "zero"),
         "Error: 'zero' is not a valid worker count: expected a whole number >= 1 or 'max'."),
    ]
    config = tmp_path / "pmx.toml"
    config.write_text('[[app]]\nname = "api"\napp = "tests.apps.plain:app"\nwokers = 2\n')
    cases.append(((
        "start", str(config)),
        f"Error: config file '{config}': app 'api': unknown key 'wokers'. "
        "Did you mean 'workers'?"))
    for args, message in cases:
        result = pmx(*args)
        assert result.returncode == 1, args
        assert result.stderr.strip() == message
    assert [a["name"] for a in pmx.status()["apps"]] == ["web"]


def test_start_from_config_file(pmx, tmp_path):
    ports = free_port(), free_port()
    config = tmp_path / "pmx.toml"
    config.write_text(
        f'[[app]]\nname = "api"\napp = "{PLAIN}"\nworkers = 2\nbind = "127.0.0.1:{ports[0]}"\n'
        f'app-dir = "{ROOT}"\n'
        f'[[app]]\nname = "side"\napp = "{PLAIN}"\nbind = "127.0.0.1:{ports[1]}"\n'
        f'app-dir = "{ROOT}"\nenv = {{ GREETING = "hello" }}\n'
    )
    pmx.ok("start", str(config))
    apps = {a["name"]: a for a in pmx.status()["apps"]}
    assert len(ready_pids(apps["api"])) == 2 and len(ready_pids(apps["side"])) == 1
    assert json.loads(get(ports[1], "/env")[1])["GREETING"] == "hello"


def test_status_without_daemon(pmx):
    result = pmx("status")
    assert result.returncode == 0
    assert result.stdout.strip() == "No apps running. Start one with: pmx start module:app"
    assert pmx.daemon_pid() is None  # status does not start a daemon


def test_crashed_daemon_is_cleaned_up_by_the_next_command(pmx):
    port = free_port()
    pmx.ok("start", PLAIN, "-i", "2", "--name", "web", "--bind", f"127.0.0.1:{port}")
    procs = pmx.processes()
    assert len(procs) == 4
    os.kill(pmx.daemon_pid(), signal.SIGKILL)
    # Masters see their control channel close and stop; no orphan survives.
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                             for p in procs), 40, "masters and workers to exit")
    assert (pmx.home / "pmx.sock").exists() and (pmx.home / "pmx.pid").exists()  # stale
    result = pmx("status")
    assert result.stdout.strip().startswith("No apps running")
    assert not (pmx.home / "pmx.sock").exists() and not (pmx.home / "pmx.pid").exists()
    pmx.ok("start", PLAIN, "--name", "web", "--bind", f"127.0.0.1:{port}")
    assert get(port, "/pid")[0] == 200


def test_describe_shows_restart_history(pmx):
    port = free_port()
    pmx.ok("start", PLAIN, "-i", "2", "--name", "web", "--bind", f"127.0.0.1:{port}")
    victim = min(ready_pids(pmx.app("web")))
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(ready_pids(pmx.app("web")) - {victim}) == 2, 10, "a replacement")
    info = json.loads(pmx.ok("describe", "web", "--json"))
    assert info["config"]["workers"] == 2
    assert info["logs"]["out"].endswith("logs/web.out.log")
    [event] = info["history"]
    assert (event["pid"], event["reason"], event["detail"]) == (
        victim, "crash", "killed by SIGKILL")
    text = pmx.ok("describe", "web")
    assert f"pid {victim}  crash (killed by SIGKILL)" in text
    assert sum(w["restarts"] for w in info["workers"]) == 1


def test_monit_draws_and_quits_on_q(pmx):
    import pty
    import select

    pmx.ok("start", PLAIN, "--name", "web", "--bind", f"127.0.0.1:{free_port()}")
    pid, fd = pty.fork()
    if pid == 0:  # the child: pmx monit on a terminal
        os.chdir(ROOT)
        os.execve(PMX[0], [*PMX, "monit"], pmx.env)
    screen = b""

    def drawn() -> bool:
        nonlocal screen
        if select.select([fd], [], [], 0.1)[0]:
            screen += os.read(fd, 65536)
        return b"pmx monit" in screen and b"web" in screen

    wait_for(drawn, 15, "the monit table")
    os.write(fd, b"q")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if select.select([fd], [], [], 0.1)[0]:
            try:
                os.read(fd, 65536)
            except OSError:
                pass
    else:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("monit did not quit on q")
    assert os.waitstatus_to_exitcode(status) == 0
    os.close(fd)


def test_startup_prints_a_systemd_unit(pmx):
    unit = pmx.ok("startup")
    assert "[Service]" in unit
    assert f"Environment=PMX_HOME={pmx.home}" in unit
    assert "-m pmx.daemon --resurrect" in unit
    assert "WantedBy=" in unit


def test_daemon_survives_sighup(pmx):
    port = free_port()
    pmx.ok("start", PLAIN, "--name", "web", "--bind", f"127.0.0.1:{port}")
    pid = pmx.daemon_pid()
    os.kill(pid, signal.SIGHUP)
    assert pmx.app("web")["state"] == "running"
    assert pmx.daemon_pid() == pid and get(port, "/pid")[0] == 200


def test_home_and_its_files_are_private_to_the_user(pmx):
    """Even in a $PMX_HOME that existed with mode 0755 and under a 022 umask, the dump
    (which holds --env values), the lock and the logs are 0600 in 0700 directories."""
    import stat

    pmx.home.mkdir(mode=0o755)
    old_umask = os.umask(0o022)
    try:
        pmx.ok("start", PLAIN, "--name", "web", "--bind", f"127.0.0.1:{free_port()}",
               "--env", "SECRET_TOKEN=s3cret")
        pmx.ok("save")
    finally:
        os.umask(old_umask)
    assert "s3cret" in (pmx.home / "dump.json").read_text()
    files = [pmx.home / "dump.json", pmx.home / "daemon.lock", *pmx.home.glob("logs/*.log")]
    assert len(files) >= 4  # the daemon's log and the app's two
    modes = {str(p): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o600}, modes
    for directory in (pmx.home, pmx.home / "logs"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_a_large_env_value_goes_through_the_daemon(pmx):
    """A 70 KB --env value: more than a control line or a control message held."""
    port = free_port()
    greeting = "g" * 70_000
    pmx.ok("start", PLAIN, "--name", "web", "--bind", f"127.0.0.1:{port}",
           f"--env=GREETING={greeting}")
    assert json.loads(get(port, "/env")[1])["GREETING"] == greeting


def test_a_name_taken_while_an_earlier_app_starts_is_refused_not_orphaned(pmx, tmp_path):
    """`pmx start FILE` with apps 'slow' then 'late'; while 'slow' boots, another
    `pmx start` takes the name 'late'. The first request then refuses 'late' instead of
    starting a second master under a name that is no longer its own."""
    import subprocess

    flag = tmp_path / "slow-flag"
    flag.touch()
    ports = free_port(), free_port(), free_port()
    config = tmp_path / "pmx.toml"
    config.write_text(
        f'[[app]]\nname = "slow"\napp = "tests.apps.slowstart:app"\n'
        f'bind = "127.0.0.1:{ports[0]}"\napp-dir = "{ROOT}"\n'
        f'env = {{ SLOW_START_FLAG = "{flag}" }}\n'
        f'[[app]]\nname = "late"\napp = "{PLAIN}"\nbind = "127.0.0.1:{ports[1]}"\n'
        f'app-dir = "{ROOT}"\n'
    )
    first = subprocess.Popen([*PMX, "start", str(config)], cwd=ROOT, env=pmx.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(a["name"] == "slow" for a in pmx.status()["apps"]), 20,
                 "the slow app to be starting")
        pmx.ok("start", PLAIN, "--name", "late", "--bind", f"127.0.0.1:{ports[2]}")
    finally:
        flag.unlink()
    _out, err = first.communicate(timeout=60)
    assert first.returncode == 1
    assert err.strip().splitlines()[-1] == (
        "Error: an app named 'late' already exists; use 'pmx restart late' or choose "
        "another --name.")
    masters = [title for title in pmx.titles() if "master" in title]
    assert len(masters) == 2  # slow's and the one 'late'; none orphaned
    assert get(ports[2], "/pid")[0] == 200


def _documented_fields(heading: str) -> list[str]:
    """The field names of the table that follows ``heading`` (a line of its own) in the
    `pmx status --json` section of docs/cli.md."""
    doc = (ROOT / "docs" / "cli.md").read_text()
    section = doc.split("`pmx status --json` prints", 1)[1].split("\n## ", 1)[0]
    rows = section.split(f"\n{heading}\n\n", 1)[1].split("\n\n", 1)[0]
    return [row.split("`")[1] for row in rows.splitlines()[2:]]


def test_status_json_has_the_fields_its_reference_documents(pmx):
    port = free_port()
    pmx.ok("start", PLAIN, "-i", "1", "--name", "web", "--bind", f"127.0.0.1:{port}")
    app = wait_for(lambda: (a := pmx.app("web"))["workers"] and a, 30, "a worker")
    doc = (ROOT / "docs" / "cli.md").read_text()
    example = json.loads(doc.split("`pmx start --json` prints the same document", 1)[1]
                         .split("```json\n", 1)[1].split("```", 1)[0])
    # The example is output, in the output's order; each table names every field once.
    for got, shown, heading in ((pmx.status(), example, "Top level:"),
                                (app, example["apps"][0], "App:"),
                                (app["workers"][0], example["apps"][0]["workers"][0],
                                 "Worker:")):
        assert list(got) == list(shown), heading
        assert sorted(got) == sorted(_documented_fields(heading)), heading


def test_status_and_describe_say_what_auto_acts_as(pmx):
    port = free_port()
    pmx.ok("start", PLAIN, "-i", "1", "--name", "web", "--bind", f"127.0.0.1:{port}")
    wait_for(lambda: pmx.app("web")["workers"], 30, "a worker")
    acting = f"auto: least-busy, 1 worker(s) on {usable_cpus()} CPU(s)"
    assert pmx.app("web")["balancing"] == acting
    assert f"balance    {acting}\n" in pmx.ok("describe", "web")
