"""pmx.wire: typed errors survive both control wires, and messages of any size pass the
SEQPACKET pair whole and in order, even when the socket cannot take them at once."""

from __future__ import annotations

import asyncio
import json

import pytest

from pmx import channel, wire
from pmx.daemon import client
from pmx.daemon.paths import Home
from pmx.errors import AppErrored, BindError, BootError, ConfigError, PmxError
from tests.conftest import ROOT, free_port, ready_pids


class Unknown(PmxError):
    pass


class Detailed(BootError):
    pass


@pytest.mark.parametrize(
    ("raised", "cls", "message", "detail"),
    [
        (PmxError("no app named 'x'."), PmxError, "no app named 'x'.", ""),
        (BootError("failed to start", "Traceback ...\nImportError: x"), BootError,
         "failed to start", "Traceback ...\nImportError: x"),
        (Detailed("reload failed", "tb"), BootError, "reload failed", "tb"),
        (AppErrored("gave up"), AppErrored, "gave up", ""),
        (BindError("port in use"), BindError, "port in use", ""),
        (Unknown("odd"), PmxError, "odd", ""),
        (KeyError("workers"), PmxError, "KeyError: 'workers'", ""),
    ],
)
def test_an_error_comes_back_as_the_class_it_was_raised_as(raised, cls, message, detail):
    reply = json.loads(json.dumps(wire.failure(raised)))  # as it travels
    with pytest.raises(PmxError) as caught:
        wire.result(reply)
    assert type(caught.value) is cls
    assert str(caught.value) == message
    assert getattr(caught.value, "detail", "") == detail


def test_a_config_error_keeps_its_key():
    reply = json.loads(json.dumps(wire.failure(ConfigError("workers", "'0' is bad."))))
    error = wire.exception(reply["error"])
    assert isinstance(error, ConfigError)
    assert (error.key, error.message) == ("workers", "'0' is bad.")


def test_an_older_peer_s_string_error_is_a_pmx_error():
    error = wire.exception("the master exited.")
    assert type(error) is PmxError and str(error) == "the master exited."


def test_a_successful_reply_gives_its_result():
    assert wire.result({"ok": True, "result": {"a": 1}}) == {"a": 1}


def test_frames_rebuild_messages_of_any_size():
    inbox = wire.Inbox()
    big = {"blob": "x" * (5 * wire.FRAME + 17)}
    frames = wire.frames(big)
    assert len(frames) == 6 and all(len(f) <= wire.FRAME + 1 for f in frames)
    assert [inbox.feed(f) for f in frames] == [None] * 5 + [big]
    assert inbox.feed(wire.frames({"small": 1})[0]) == {"small": 1}
    with pytest.raises(ValueError, match="not a control frame"):
        inbox.feed(b"{}")


def test_outbox_sends_what_the_socket_cannot_take_at_once_whole_and_in_order():
    """Three messages, the first far larger than a SEQPACKET pair's buffer: the sender
    queues what does not fit, the reader (which starts late) gets all three, in order."""
    messages = [{"n": 0, "blob": "a" * (4 << 20)}, {"n": 1}, {"n": 2, "blob": "b" * 100_000}]

    async def main() -> list[dict]:
        ours, theirs = channel.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        outbox = wire.Outbox(ours)
        for message in messages:
            outbox.put(message)
        assert outbox._queue, "the pair's buffer took everything: the test tests nothing"
        received: list[dict] = []
        inbox = wire.Inbox()
        done = asyncio.get_running_loop().create_future()

        def readable() -> None:
            for data, _fds in channel.pending(theirs):
                message = inbox.feed(data)
                if message is not None:
                    received.append(message)
            if len(received) == len(messages) and not done.done():
                done.set_result(None)

        asyncio.get_running_loop().add_reader(theirs.fileno(), readable)
        await asyncio.wait_for(done, 10)
        asyncio.get_running_loop().remove_reader(theirs.fileno())
        assert not outbox._queue and not outbox._waiting
        ours.close()
        theirs.close()
        return received

    assert asyncio.run(main()) == messages


def test_errors_reach_the_cli_with_their_class(pmx):
    """Through a real daemon: a bad setting comes back as a ConfigError naming its key,
    an unknown app as a PmxError; the CLI prints each on one line."""
    home = Home(pmx.home)
    pmx.ok("start", "tests.apps.plain:app", "--name", "web", "--bind", f"127.0.0.1:{free_port()}")
    with pytest.raises(ConfigError) as caught:
        client.request(home, "start", {"configs": [{"app": "tests.apps.plain:app",
                                                    "workers": "none"}]})
    assert caught.value.key == "workers"
    assert "'none' is not a valid worker count" in caught.value.message
    with pytest.raises(PmxError) as missing:
        client.request(home, "stop", {"name": "nosuch"})
    assert type(missing.value) is PmxError
    result = pmx("scale", "nosuch", "2")
    assert result.returncode == 1
    assert result.stderr == "Error: no app named 'nosuch'; 'pmx status' lists the apps.\n"


def test_a_config_larger_than_a_datagram_reaches_master_and_workers(pmx, tmp_path):
    """The config travels both SEQPACKET pairs (daemon -> master -> worker) in frames:
    300 KB of forwarded-allow-ips, above a pair's ~200 KiB datagram limit (and the
    128 KiB a command-line argument may have), from a config file."""
    ips = ",".join(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(27_000))
    assert len(ips) > 300_000
    path = tmp_path / "pmx.toml"
    path.write_text(f'[[app]]\napp = "tests.apps.plain:app"\nname = "big"\nworkers = 2\n'
                    f'bind = "127.0.0.1:{free_port()}"\napp-dir = "{ROOT}"\n'
                    f'forwarded-allow-ips = "{ips}"\n')
    pmx.ok("start", str(path))
    app = pmx.app("big")
    assert app["state"] == "running", app
    assert len(ready_pids(app)) == 2
