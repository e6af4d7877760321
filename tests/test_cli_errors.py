"""Every bad input to ``pmx run``: its exact one-line message, a non-zero exit, and
nothing left running."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.conftest import PMX, ROOT, free_port, group_alive, wait_for

APP = "tests.apps.plain:app"


def pmx_run_to_exit(*args: str) -> tuple[int, str]:
    proc = subprocess.Popen(
        [*PMX, "run", *args], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        _out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not group_alive(proc.pid), 5, "no pmx process left behind")
    return proc.returncode, err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["nosuch:app"], 1,
         'Error: app "nosuch:app" failed to start: Could not import module "nosuch".'),
        (["tests.apps.plain:nope"], 1,
         'Error: app "tests.apps.plain:nope" failed to start: '
         'Attribute "nope" not found in module "tests.apps.plain".'),
        (["main"], 2,
         "Error: Invalid value for 'TARGET': Import string \"main\" must be in format "
         '"<module>:<attribute>".'),
        ([APP, "-i", "0"], 2,
         "Error: Invalid value for '-i' / '--workers': '0' is not a valid worker count: "
         "expected a whole number >= 1 or 'max'."),
        ([APP, "-i", "abc"], 2,
         "Error: Invalid value for '-i' / '--workers': 'abc' is not a valid worker count: "
         "expected a whole number >= 1 or 'max'."),
        ([APP, "--balance", "fastest"], 2,
         "Error: Invalid value for '--balance': 'fastest' is not one of 'auto', "
         "'round-robin', 'least-conn', 'least-busy', 'packed'."),
        ([APP, "--bind", "localhost"], 2,
         "Error: Invalid value for '--bind': 'localhost' is not a valid bind address: "
         "expected HOST:PORT or unix:PATH."),
        ([APP, "--env", "NOVALUE"], 2,
         "Error: Invalid value for '--env': 'NOVALUE' is not valid: expected KEY=VALUE."),
        ([APP, "--graceful-timeout", "soon"], 2,
         "Error: Invalid value for '--graceful-timeout': 'soon' is not a valid duration: "
         "expected seconds >= 0."),
        ([APP, "--max-header-size", "big"], 2,
         "Error: Invalid value for '--max-header-size': 'big' is not a valid size: "
         "expected bytes or a number with K, M or G."),
        ([APP, "--app-dir", "/nonexistent/dir"], 2,
         "Error: Invalid value for '--app-dir': '/nonexistent/dir' is not a directory."),
        ([APP, "--host", "127.0.0.1", "--bind", "127.0.0.1:1"], 2,
         "Error: Use either --bind or --host/--port, not both."),
        (["tests.apps.not_an_app:value"], 1,
         'Error: app "tests.apps.not_an_app:value" failed to start: '
         '"tests.apps.not_an_app:value" is not callable: expected an ASGI or WSGI app.'),
    ],
)
def test_bad_input(args, code, message):
    if "--bind" not in args and "--host" not in args:
        args = [*args, "--bind", f"127.0.0.1:{free_port()}"]
    returncode, err = pmx_run_to_exit(*args)
    assert returncode == code
    assert err.strip().splitlines()[-1] == message


def test_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        returncode, err = pmx_run_to_exit(APP, "--bind", f"127.0.0.1:{port}")
    assert returncode == 1
    assert err.strip() == f"Error: cannot listen on 127.0.0.1:{port}: address already in use."


def test_bad_admin_address():
    returncode, err = pmx_run_to_exit(APP, "--bind", f"127.0.0.1:{free_port()}",
                                      "--admin", "localhost")
    assert returncode == 2
    assert err.strip().splitlines()[-1] == (
        "Error: Invalid value for '--admin': 'localhost' is not a valid admin address: "
        "expected HOST:PORT."
    )


def test_admin_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        returncode, err = pmx_run_to_exit(APP, "--bind", f"127.0.0.1:{free_port()}",
                                          "--admin", f"127.0.0.1:{port}")
    assert returncode == 1
    assert err.strip().splitlines()[-1] == (
        f"Error: cannot listen on admin address 127.0.0.1:{port}: address already in use."
    )
