"""The master <-> worker channel on a real socket pair: framing and fd passing."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from pmx import channel


@pytest.fixture
def pair():
    master, worker = channel.socketpair()
    worker.setblocking(False)
    yield master, worker
    master.close()
    worker.close()


def test_fds_arrive_in_one_message_with_the_small_buffer(pair):
    master, worker = pair
    sockets = [socket.socket() for _ in range(5)]
    try:
        channel.send_fds(master, [s.fileno() for s in sockets])
        [(message, fds)] = list(channel.pending(worker, channel.MAX_FROM_MASTER))
        assert message[:1] == channel.FDS and channel.fds_sent(message) == 5
        assert len(fds) == 5
        for fd in fds:  # new descriptors for the same sockets
            assert os.fstat(fd).st_ino in {os.fstat(s.fileno()).st_ino for s in sockets}
            os.close(fd)
    finally:
        for s in sockets:
            s.close()


def test_fds_the_receiver_could_not_take_are_counted(pair):
    """What a worker at its fd limit sees: fewer fds than the message says were sent
    (here the receiver's ancillary buffer holds two; at the limit, the kernel drops
    what it cannot install the same way)."""
    master, worker = pair
    sockets = [socket.socket() for _ in range(5)]
    try:
        channel.send_fds(master, [s.fileno() for s in sockets])
        message, ancillary, flags, _ = worker.recvmsg(64, socket.CMSG_SPACE(2 * 4))
        assert flags & socket.MSG_CTRUNC
        received = [fd for _l, _k, data in ancillary
                    for fd in struct.unpack(f"{len(data) // 4}i", data[: len(data) // 4 * 4])]
        assert channel.fds_sent(message) - len(received) == 3
        for fd in received:
            os.close(fd)
    finally:
        for s in sockets:
            s.close()


def test_every_master_message_fits_the_workers_buffer():
    fds = channel._FDS_HEADERS[channel.MAX_FDS][0]
    for message in (fds, channel.STOP, channel.encode_probe(2**64 - 1)):
        assert len(message) <= channel.MAX_FROM_MASTER


def test_pending_reads_in_order_then_stops(pair):
    master, worker = pair
    master.send(channel.encode_probe(7))
    master.send(channel.STOP)
    messages = [m for m, _fds in channel.pending(worker, channel.MAX_FROM_MASTER)]
    assert [channel.decode_probe(messages[0]), messages[1]] == [7, channel.STOP]
    assert list(channel.pending(worker)) == []  # nothing queued: no message, no EOF


def test_pending_ends_with_eof_when_the_peer_is_gone(pair):
    master, worker = pair
    master.close()
    assert list(channel.pending(worker)) == [(b"", [])]
