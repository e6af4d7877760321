"""The CLI's side of the control socket, against real unix sockets."""

from __future__ import annotations

import socket

import pytest

from pmx.daemon.client import DaemonNotRunning, request
from pmx.daemon.paths import Home


@pytest.fixture
def bound_not_listening(tmp_path):
    """What a daemon that is starting has for a moment: its socket file bound, not yet
    listening (connections are refused)."""
    home = Home(tmp_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(home.sock))
    yield home
    sock.close()


def test_waiting_for_a_starting_daemon_leaves_its_socket_alone(bound_not_listening):
    home = bound_not_listening
    with pytest.raises(DaemonNotRunning):
        request(home, "ping", timeout=1, clean_stale=False)
    assert home.sock.exists()


def test_a_socket_file_that_refuses_is_otherwise_removed_as_stale(bound_not_listening):
    home = bound_not_listening
    home.pid.write_text("1\n")
    with pytest.raises(DaemonNotRunning):
        request(home, "ping", timeout=1)
    assert not home.sock.exists() and not home.pid.exists()
