"""Handing a connection back, in process (pmx.worker.bridge ``movable``/``detach``,
pmx.worker.handback): two bridges on one event loop stand for two workers. Both loops
a worker may run on, asyncio and uvloop, are checked."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop

from pmx import channel
from pmx.config import AppConfig
from pmx.loadslot import Load
from pmx.master.rebalance import Rebalancer, calm, gather_pays, gathering, lasting, releases
from pmx.worker.blocks import BlockWatch
from pmx.worker.bridge import UvicornBridge, connection_of
from pmx.worker.handback import HandBack
from pmx.worker.hooks import RequestHooks
from tests.apps.plain import app as plain_app

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
GET = b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n"


def run(loop: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    event_loop = LOOPS[loop]()
    try:
        event_loop.run_until_complete(asyncio.wait_for(scenario(), 20))
    finally:
        event_loop.close()


async def started(app: Any = plain_app) -> UvicornBridge:
    bridge = UvicornBridge(AppConfig(app="tests.apps.plain:app").validate(), app, 1)
    assert await bridge.startup() is None
    return bridge


class Client:
    """A connection over real TCP on 127.0.0.1; its server side is adopted by ``bridge``."""

    def __init__(self, listener: socket.socket, bridge: UvicornBridge) -> None:
        self.sock = socket.create_connection(listener.getsockname())
        self.sock.setblocking(False)
        fd, _ = listener._accept()  # type: ignore[attr-defined]
        bridge.adopt(fd)

    async def response(self) -> bytes:
        data = b""
        loop = asyncio.get_running_loop()
        while True:
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            if not _:
                continue
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(body) >= length:
                assert len(body) == length, "one response, no more"
                return data

    def pending(self) -> bytes | None:
        """What the server sent and was not read: None if the connection is closed."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return b""
        return data or None


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0.005)


def protocols(bridge: UvicornBridge) -> list[Any]:
    return bridge.connections()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_detached_connection_keeps_its_socket_and_the_next_worker_reads_what_waits(loop):
    async def scenario() -> None:
        old, new = await started(), await started()
        with listener() as lsock:
            client = Client(lsock, old)
            await old.wait_adopted()
            client.sock.sendall(GET)
            assert b"200 OK" in await client.response()
            await turns()
            [protocol] = protocols(old)
            assert old.movable(protocol)
            fd = old.detach(protocol)
            client.sock.sendall(GET)  # sent while the fd is on its way: waits in the kernel
            await turns()
            assert old.counters()[1] == 0, "the old worker forgot the connection"
            assert client.pending() == b"", "not closed, and nothing answered by the old one"
            new.adopt(fd)
            assert b"200 OK" in await client.response()
            await turns()
            assert client.pending() == b"", "answered exactly once"
            state_old, state_new = old.server.server_state, new.server.server_state
            assert (state_old.total_requests, state_new.total_requests) == (1, 1)
            client.sock.close()
        await old.shutdown()
        await new.shutdown()

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_only_idle_kept_alive_connections_are_movable(loop):
    async def scenario() -> None:
        bridge = await started()
        with listener() as lsock:
            fresh = Client(lsock, bridge)
            half = Client(lsock, bridge)
            busy = Client(lsock, bridge)
            idle = Client(lsock, bridge)
            await bridge.wait_adopted()
            for client in (half, idle):
                client.sock.sendall(GET)
                await client.response()
            half.sock.sendall(b"GET /pid HTTP/1.1\r\nHo")
            busy.sock.sendall(b"GET /slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n")
            await turns()
            by_client = {}
            for protocol in protocols(bridge):
                port = protocol.transport.get_extra_info("peername")[1]
                by_client[port] = bridge.movable(protocol)
            name = {c.sock.getsockname()[1]: label for c, label in (
                (fresh, "fresh"), (half, "half"), (busy, "busy"), (idle, "idle"))}
            assert {name[port]: movable for port, movable in by_client.items()} == {
                "fresh": False, "half": False, "busy": False, "idle": True}
            half.sock.sendall(b"st: x\r\n\r\n")  # the half request, finished, is served
            assert b"200 OK" in await half.response()
            assert b"200 OK" in await busy.response()
            for client in (fresh, half, busy, idle):
                client.sock.close()
        await bridge.shutdown()

    run(loop, scenario)


async def websocket_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await plain_app(scope, receive, send)
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass


@pytest.mark.parametrize("loop", LOOPS)
def test_a_websocket_is_never_movable(loop):
    async def scenario() -> None:
        bridge = await started(websocket_app)
        with listener() as lsock:
            client = Client(lsock, bridge)
            await bridge.wait_adopted()
            client.sock.sendall(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += await asyncio.get_running_loop().sock_recv(client.sock, 4096)
            assert data.startswith(b"HTTP/1.1 101")
            await turns()
            assert protocols(bridge), "the WebSocket is open"
            assert not any(bridge.movable(p) for p in protocols(bridge))
            client.sock.close()
        await bridge.shutdown()

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_settled_connections_are_those_open_at_two_looks(loop):
    """What evening out counts: a connection open at the look before and still open now,
    not one opened since or closed since."""

    async def scenario() -> None:
        bridge = await started()
        with listener() as lsock:
            kept, closing = Client(lsock, bridge), Client(lsock, bridge)
            await bridge.wait_adopted()
            await turns()
            assert bridge.settle() == 0  # the first look
            late = Client(lsock, bridge)
            await bridge.wait_adopted()
            closing.sock.close()
            await turns()
            assert len(protocols(bridge)) == 2
            assert bridge.settle() == 1  # kept; not late (new), nor closing (gone)
            assert bridge.settle() == 2  # kept and late
            for client in (kept, late):
                client.sock.close()
        await bridge.shutdown()

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_release_hands_back_what_is_idle_and_then_what_turns_idle(loop):
    async def scenario() -> None:
        bridge = await started()
        ours, master = channel.socketpair()
        ours.setblocking(False)
        hooks = RequestHooks()
        bridge.uv_config.loaded_app = hooks.wrap(bridge.uv_config.loaded_app)
        handback = HandBack(ours, bridge, hooks)
        with listener() as lsock:
            idle, busy = Client(lsock, bridge), Client(lsock, bridge)
            await bridge.wait_adopted()
            idle.sock.sendall(GET)
            await idle.response()
            busy.sock.sendall(b"GET /slow?ms=200 HTTP/1.1\r\nHost: x\r\n\r\n")
            await turns()
            handback.release(2)
            message, fds = channel.recv(master)
            assert (message[:1], channel.fds_sent(message), len(fds)) == (channel.HAND_BACK, 1, 1)
            assert hooks.after_response is not None, "still one to release"
            assert b"200 OK" in await busy.response()  # its response is not lost...
            message, more = channel.recv(master)  # ...and then it moves
            assert channel.fds_sent(message) == 1 and len(more) == 1
            assert hooks.after_response is None, "nothing more asked"
            assert handback.moved == 2
            for fd in fds + more:  # still open: a request on each is answered by a new worker
                socket.socket(fileno=fd).close()
            idle.sock.close()
            busy.sock.close()
        ours.close()
        master.close()
        await bridge.shutdown()

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_release_keeps_a_connection_that_blocks_and_a_gather_hands_back_only_it(loop):
    async def scenario() -> None:
        bridge = await started()
        ours, master = channel.socketpair()
        ours.setblocking(False)
        master.setblocking(False)
        blocks = BlockWatch(connection_of)
        hooks = RequestHooks(blocks)
        bridge.uv_config.loaded_app = hooks.wrap(bridge.uv_config.loaded_app)
        handback = HandBack(ours, bridge, hooks, blocks)
        with listener() as lsock:
            blocking, fast = Client(lsock, bridge), Client(lsock, bridge)
            await bridge.wait_adopted()
            for _ in range(2):  # marked on its second block
                blocking.sock.sendall(b"GET /block?ms=10 HTTP/1.1\r\nHost: x\r\n\r\n")
                await blocking.response()
            fast.sock.sendall(GET)
            await fast.response()
            await turns()
            assert blocks.count == 1
            handback.release(2)  # asks for two, gets the one that does not block
            [(message, fds)] = list(channel.pending(master))
            assert (message[:1], len(fds)) == (channel.HAND_BACK, 1)
            with socket.socket(fileno=fds[0]) as moved:
                assert moved.getpeername() == fast.sock.getsockname()
            handback.gather(5)
            [(message, fds)] = list(channel.pending(master))
            assert (message[:1], len(fds)) == (channel.GATHERED, 1)
            with socket.socket(fileno=fds[0]) as moved:
                assert moved.getpeername() == blocking.sock.getsockname()
            await turns()
            assert handback.moved == 2 and bridge.counters()[1] == 0
            blocking.sock.close()
            fast.sock.close()
        ours.close()
        master.close()
        await bridge.shutdown()

    run(loop, scenario)


@pytest.mark.parametrize(("loads", "asked"), [
    ([32, 32, 0, 0], [16, 16, 0, 0]),
    ([22, 22, 20, 0], [6, 6, 4, 0]),
    ([17, 17, 15, 15], [1, 1, 0, 0]),
    ([16, 17, 16, 16], [0, 0, 0, 0]),
    ([5], [0]),
    ([], []),
    ([3, 0, 0, 0], [2, 0, 0, 0]),
])
def test_releases_ask_the_busiest_for_what_they_hold_beyond_an_even_share(loads, asked):
    assert releases(loads) == asked


@pytest.mark.parametrize(("blockers", "asks", "room"), [
    ([1, 1], [0, 1], [1, 0]),  # two workers: one keeps both, the other is free
    ([0, 1, 1, 1], [0, 0, 0, 1], [0, 1, 0, 0]),  # at most half the workers: two
    ([0, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]),  # already on the fewest
    ([2, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]),  # on half, as even as they get
    ([4, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]),  # one is fewer than half: stays
    ([1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0]),
    ([0, 0, 0], [0, 0, 0], [0, 0, 0]),
    ([3], [0], [0]),
    ([], [], []),
])
def test_connections_that_block_gather_on_the_fewest_workers_at_most_half(blockers, asks,
                                                                          room):
    got_asks, got_room, half = gathering(blockers)
    assert (got_asks, got_room) == (asks, room)
    assert sum(asks) == sum(room)
    assert (half is None) == (sum(1 for count in blockers if count) <= max(1, len(blockers) // 2))


@pytest.mark.parametrize(("blocked", "half", "asks", "room"), [
    # the half gathered on before stays, even where others now hold more
    ([0, 3, 1, 0], [0, 2], [0, 3, 0, 0], [2, 0, 1, 0]),
    # nothing outside it: nothing moves, however few the half holds
    ([0, 0, 5, 0], [0, 2], [0, 0, 0, 0], [0, 0, 0, 0]),
    ([1, 1], [1], [1, 0], [0, 1]),
])
def test_connections_that_block_only_ever_move_into_the_half_kept(blocked, half, asks, room):
    assert gathering(blocked, half) == (asks, room, half)


@pytest.mark.parametrize(("calm", "blocking", "pays"), [
    (900, 32, True),  # kept-alive clients whose requests block, among new fast ones
    (20, 2, True),  # two blocking back to back hold back the fast ones: still more
    (0, 64, False),  # every client blocks now and then: nobody would gain
    (2, 2, False),  # as many would lose as gain
    (0, 0, False),  # nothing served: nothing to weigh
])
def test_gathering_pays_while_more_clients_gain_than_lose(calm, blocking, pays):
    assert gather_pays(calm, blocking) is pays


@pytest.mark.parametrize("loop", LOOPS)
def test_a_full_channel_keeps_the_fds_until_the_master_reads(loop):
    """The drain awaits ``flushed``: every handed-back fd reaches the master's channel."""

    async def scenario() -> None:
        bridge = await started()
        ours, master = channel.socketpair()
        ours.setblocking(False)
        handback = HandBack(ours, bridge, RequestHooks())
        while True:  # the master does not read: fill its side of the channel
            try:
                ours.send(channel.METRICS + b"{}")
            except BlockingIOError:
                break
        with listener() as lsock:
            client = Client(lsock, bridge)
            await bridge.wait_adopted()
            client.sock.sendall(GET)
            await client.response()
            await turns()
            handback.drain()
            assert handback.queues[channel.HAND_BACK], "queued while the channel is full"
            waiting = asyncio.ensure_future(handback.flushed())
            await turns()
            assert not waiting.done(), "the drain would wait"
            master.setblocking(False)
            received: list[int] = []
            while not waiting.done():
                for message, fds in channel.pending(master, channel.MAX_MESSAGE):
                    if message[:1] == channel.HAND_BACK:
                        received += fds
                await asyncio.sleep(0.005)
            for _message, fds in channel.pending(master, channel.MAX_MESSAGE):
                received += fds
            assert len(received) == 1 and not handback.queues[channel.HAND_BACK]
            with socket.socket(fileno=received[0]) as moved:
                assert moved.getpeername() == client.sock.getsockname()  # the same connection
            client.sock.close()
        ours.close()
        master.close()
        await bridge.shutdown()

    run(loop, scenario)


def test_a_replacement_joining_starts_no_evening_out():
    """The worker it replaces drains right after and hands it its connections: evening
    out the others first would move some connections twice in a rolling reload."""

    async def scenario() -> None:
        dispatch: Any = SimpleNamespace(rotation=[], closed=False, policy=EVENS)
        rebalancer = Rebalancer(dispatch, "all")
        rebalancer.joined(SimpleNamespace(replacement=True))  # type: ignore[arg-type]
        assert rebalancer.timer is None
        rebalancer.joined(SimpleNamespace(replacement=False))  # type: ignore[arg-type]
        assert rebalancer.timer is not None
        rebalancer.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(("uses", "evens_out", "uneven", "hands_on"), [
    ("all", True, True, True), ("join", True, False, False), ("even", False, True, False),
    ("drain", False, False, True), ("off", False, False, False),
])
def test_each_use_of_rebalancing_is_switched_on_its_own(uses, evens_out, uneven, hands_on):
    """--rebalance join: a worker joining gets its share, and nothing else moves;
    even: counts left uneven are evened out; drain: a draining worker hands its
    connections on instead of closing them; off: none of these."""

    async def scenario() -> tuple[bool, bool, bytes]:
        dispatch: Any = SimpleNamespace(rotation=[object()], closed=False, policy=EVENS)
        rebalancer = Rebalancer(dispatch, uses)
        rebalancer.joined(SimpleNamespace(replacement=False))  # type: ignore[arg-type]
        started = rebalancer.timer is not None
        rebalancer.close()
        rebalancer.start()
        looks = rebalancer.even_timer is not None
        rebalancer.close()
        return started, looks, rebalancer.stop_message()

    started, looks, stop = asyncio.run(scenario())
    assert started is evens_out
    assert looks is uneven
    assert stop == (channel.STOP_HANDING_BACK if hands_on else channel.STOP)


EVENS = SimpleNamespace(evens_out=True)


@pytest.mark.parametrize(("before", "now", "lasts"), [
    ({1: 0, 2: 3}, {1: 0, 2: 2}, {2: 2}),  # the same worker, twice: the smaller excess
    ({1: 0, 2: 1}, {1: 0, 2: 5}, {2: 1}),  # four came since: they may not stay
    ({}, {1: 4, 2: 0}, {}),  # the first look
    ({1: 2, 2: 0}, {1: 0, 2: 2}, {}),  # connections that came and went
    ({1: 2, 2: 0}, {2: 0, 3: 2}, {}),  # worker 1 left; 3 is new
])
def test_an_excess_lasts_when_the_same_worker_held_it_at_two_looks(before, now, lasts):
    assert lasting(before, now) == lasts


@pytest.mark.parametrize(("report", "stuck", "is_calm"), [
    (Load(connections=20), 0.0, True),
    (Load(connections=20, blockers=1), 0.0, False),  # a connection whose requests block
    (Load(connections=20, holding=1), 0.0, False),  # a request for a path that blocks
    (Load(connections=20, blocked=8), 0.0, True),  # a release leaves those alone
    (Load(connections=20), 0.010, True),  # a burst of requests served in one go
    (Load(connections=20), 0.030, False),  # its loop is held now
])
def test_counts_are_evened_out_only_between_calm_loops(report, stuck, is_calm):
    assert calm(report, stuck) is is_calm


class FakeWorker(SimpleNamespace):
    """What evening out reads of a worker, and the asks it sends it."""

    def __init__(self, worker_id: int, settled: int, blocked: int = 0, holding: int = 0,
                 ) -> None:
        report = Load(connections=settled + 3, settled=settled, blocked=blocked,
                      holding=holding)
        self.asked: list[int] = []
        super().__init__(id=worker_id, load=report.connections, report=report,
                         snapshot=lambda now: SimpleNamespace(stuck=0.0),
                         chan=SimpleNamespace(send=lambda message: self.asked.append(
                             channel.decode_release(message))))


def even_round(rebalancer: Rebalancer, rotation: list[FakeWorker]) -> dict[int, list[int]]:
    """One look, with the workers in ``rotation``: what each was asked for."""
    rebalancer.dispatch.rotation = rotation
    rebalancer._even_round()
    return {w.id: w.asked for w in rotation if w.asked}


@pytest.mark.parametrize(("policy", "first", "second", "asked"), [
    (EVENS, [20, 0], [20, 0], {1: [10]}),  # uneven at two looks: evened out
    (EVENS, [20, 0], [14, 0], {1: [7]}),  # six closed meanwhile: what is left
    (EVENS, [20, 0], [10, 10], {}),  # even again at the second look
    (EVENS, [0, 0], [20, 0], {}),  # one look is not enough
    (EVENS, [12, 3, 0], [12, 3, 0], {1: [7]}),  # to an even share (5), rounded up
    (SimpleNamespace(evens_out=False), [20, 0], [20, 0], {}),  # packed: by design
])
def test_settled_counts_uneven_at_two_looks_in_a_row_are_asked_for_once(
        policy, first, second, asked):
    async def scenario() -> dict[int, list[int]]:
        dispatch: Any = SimpleNamespace(closed=False, policy=policy, rotation=[])
        rebalancer = Rebalancer(dispatch, "all")
        rebalancer.start()
        if rebalancer.even_timer is None:
            return {}  # it never looks
        assert even_round(rebalancer, [FakeWorker(i + 1, n) for i, n in enumerate(first)]) == {}
        got = even_round(rebalancer, [FakeWorker(i + 1, n) for i, n in enumerate(second)])
        rebalancer.close()
        return got

    assert asyncio.run(scenario()) == asked


@pytest.mark.parametrize(("counts", "gathers", "asked"), [
    ([(20, 0, 0), (0, 0, 0)], False, {1: [10]}),
    ([(20, 0, 0), (0, 0, 1)], False, {}),  # the other's loop runs a request that blocks
    ([(20, 20, 0), (0, 0, 0)], False, {}),  # all 20 have blocked: a release moves none
    ([(20, 16, 0), (0, 0, 0)], False, {1: [4]}),  # 4 have not: those can move
    ([(20, 0, 0), (0, 0, 0)], True, {}),  # connections that block are being gathered
])
def test_what_stops_an_evening_out(counts, gathers, asked):
    async def scenario() -> dict[int, list[int]]:
        dispatch: Any = SimpleNamespace(closed=False, policy=EVENS, rotation=[])
        rebalancer = Rebalancer(dispatch, "all")
        rebalancer.gathers = gathers
        rotation = [FakeWorker(i + 1, *c) for i, c in enumerate(counts)]
        even_round(rebalancer, rotation)
        got = even_round(rebalancer, rotation)
        rebalancer.close()
        return got

    assert asyncio.run(scenario()) == asked


def test_no_evening_out_while_connections_that_moved_settle():
    """A replacement joins in a rolling reload, and the worker it replaces hands it its
    connections: its settled count is low until they have settled there, and nothing
    moves for that."""

    async def scenario() -> list[dict[int, list[int]]]:
        dispatch: Any = SimpleNamespace(closed=False, policy=EVENS, rotation=[])
        rebalancer = Rebalancer(dispatch, "all")
        rotation = [FakeWorker(1, 20), FakeWorker(2, 0)]
        rebalancer.joined(SimpleNamespace(replacement=True))  # type: ignore[arg-type]
        during = [even_round(rebalancer, rotation) for _ in range(2)]
        rebalancer.resume = 0.0  # EVEN_PAUSE has passed
        after = [even_round(rebalancer, rotation) for _ in range(2)]
        rebalancer.close()
        return during + after

    assert asyncio.run(scenario()) == [{}, {}, {}, {1: [10]}]


def test_after_an_evening_out_the_settled_counts_are_given_time_to_catch_up():
    """The connections moved show as settled on their new worker only after two of its
    looks: until then the counts look as uneven as before, and nothing is asked again."""

    async def scenario() -> list[int]:
        dispatch: Any = SimpleNamespace(closed=False, policy=EVENS, rotation=[])
        rebalancer = Rebalancer(dispatch, "all")
        rotation = [FakeWorker(1, 20), FakeWorker(2, 0)]
        for _ in range(5):
            even_round(rebalancer, rotation)
        rebalancer.close()
        return rotation[0].asked

    assert asyncio.run(scenario()) == [10]
