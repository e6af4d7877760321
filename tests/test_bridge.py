"""The uvicorn internals pmx relies on (pmx/worker/bridge.py), checked one by one.

If a uvicorn release changes any of these, this file fails with a message naming what
changed, before any subtler failure in the engine tests.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from typing import Any

import pytest
import uvicorn
from uvicorn.importer import import_from_string

from pmx.config import AppConfig
from pmx.loadslot import Load
from pmx.worker.bridge import UvicornBridge, _HandedFd, connection_of
from tests.apps.plain import app as plain_app


def load_of(bridge: UvicornBridge) -> Load:
    """The bridge's counters as the worker publishes them in its load slot."""
    return Load(*bridge.counters())


def make_bridge() -> UvicornBridge:
    return UvicornBridge(AppConfig(app="tests.apps.plain:app").validate(), plain_app, 1)


def test_config_load_provides_protocol_and_lifespan_classes():
    bridge = make_bridge()
    assert inspect.isclass(bridge.uv_config.http_protocol_class), "Config.http_protocol_class"
    assert inspect.isclass(bridge.uv_config.lifespan_class), "Config.lifespan_class"


def test_protocol_constructor_signature():
    cls = make_bridge().uv_config.http_protocol_class
    params = inspect.signature(cls.__init__).parameters
    for name in ("config", "server_state", "app_state", "_loop"):
        assert name in params, f"{cls.__name__}.__init__ lost its {name!r} parameter"


def test_server_state_fields():
    state = uvicorn.Server(uvicorn.Config(plain_app)).server_state
    assert isinstance(state.connections, set), "ServerState.connections"
    assert isinstance(state.tasks, set), "ServerState.tasks"
    assert state.total_requests == 0, "ServerState.total_requests"
    assert isinstance(state.default_headers, list), "ServerState.default_headers"


def test_server_methods_used():
    for name in ("on_tick", "shutdown"):
        assert inspect.iscoroutinefunction(getattr(uvicorn.Server, name)), f"Server.{name}"
    assert callable(import_from_string("uvicorn._compat:asyncio_run")), "_compat.asyncio_run"


def test_a_served_connection_is_tracked_and_counted():
    """Drive one request through the bridge on a socket pair, as a worker does."""

    async def scenario() -> None:
        changes: list[int] = []
        bridge = make_bridge()
        bridge.server.server_state.connections.on_change = lambda: changes.append(1)
        assert await bridge.startup() is None
        assert bridge.server.server_state.default_headers, "on_tick sets the date header"
        ours, theirs = socket.socketpair()
        # The protocol must see a fresh connection before the first request arrives.
        bridge.adopt(theirs.detach())
        await bridge.wait_adopted()
        assert load_of(bridge).connections == 1 and load_of(bridge).received == 1
        fresh = [c for c in bridge.connections() if getattr(c, "cycle", 0) is None]
        assert len(fresh) == 1, "HTTP protocol.cycle is None before a request"
        reader, writer = await asyncio.open_connection(sock=ours)
        writer.write(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 5)
        assert response.startswith(b"HTTP/1.1 200 OK")
        writer.close()
        for _ in range(100):
            if not load_of(bridge).connections:
                break
            await asyncio.sleep(0.01)
        load = load_of(bridge)
        assert (load.connections, load.inflight, load.requests) == (0, 0, 1)
        assert changes, "ServerState.connections.add/discard are called by the protocol"
        await bridge.shutdown()

    asyncio.run(scenario())


def test_a_request_send_names_its_connection_until_it_closes():
    """``connection_of(send)`` is the protocol's transport (what BlockWatch keys on),
    and ``on_close`` hears of the same transport when the connection closes."""

    seen: list[object] = []
    closed: list[object] = []

    async def app(scope, receive, send):
        if scope["type"] == "http":
            seen.append(connection_of(send))
        await plain_app(scope, receive, send)

    async def scenario() -> None:
        bridge = UvicornBridge(AppConfig(app="tests.apps.plain:app").validate(), app, 1,
                               on_close=closed.append)
        assert await bridge.startup() is None
        ours, theirs = socket.socketpair()
        bridge.adopt(theirs.detach())
        await bridge.wait_adopted()
        (protocol,) = bridge.server.server_state.connections
        reader, writer = await asyncio.open_connection(sock=ours)
        for _ in range(2):  # kept alive: the same connection both times
            writer.write(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        for _ in range(100):  # until the response's end has reached the protocol
            if protocol.timeout_keep_alive_task is not None:
                break
            await asyncio.sleep(0.01)
        # What close_slow_heads reads: idle between requests = a keep-alive timer set
        # and the last cycle complete; a head's first byte clears the timer.
        assert protocol.timeout_keep_alive_task is not None, "keep-alive timer after a response"
        assert protocol.cycle.response_complete, "cycle.response_complete"
        writer.write(b"GE")
        for _ in range(100):
            if protocol.timeout_keep_alive_task is None:
                break
            await asyncio.sleep(0.01)
        assert protocol.timeout_keep_alive_task is None, "a request's first byte clears it"
        assert bridge.close_slow_heads(bridge.loop.time(), 60) == 0  # seen, not yet late
        assert bridge.close_slow_heads(bridge.loop.time() + 61, 60) == 1
        writer.close()
        for _ in range(100):
            if closed:
                break
            await asyncio.sleep(0.01)
        assert seen == [protocol.transport] * 2, "send.__self__.transport is the connection's"
        assert closed == [protocol.transport], "on_close gets the closed protocol's transport"
        await bridge.shutdown()

    asyncio.run(scenario())


def test_under_uvloop_a_handed_fd_goes_to_the_transport_without_a_socket_object():
    """uvloop's ``connect_accepted_socket`` reads only family, type and ``fileno()`` of
    what it is given, lets libuv own the fd, and calls ``close()`` on it when the
    transport closes (it would ``detach()`` a ``socket.socket``): the bridge's carrier
    relies on exactly that."""
    pytest.importorskip("uvloop")
    carriers: list[Any] = []
    bridge = make_bridge()

    async def scenario() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        assert await bridge.startup() is None
        with socket.create_server(("127.0.0.1", 0)) as listener:
            for _ in range(2):  # the first one sets up the carrier class, then recorded
                client = socket.create_connection(listener.getsockname())
                accepted, _addr = listener.accept()
                if bridge._handed is not None:
                    carrier_class = bridge._handed
                    assert isinstance(carrier_class, type)
                    assert issubclass(carrier_class, _HandedFd)

                    def recorded(fd: int, carrier_class: type = carrier_class) -> Any:
                        carriers.append(carrier_class(fd))
                        return carriers[-1]

                    bridge._handed = recorded
                bridge.adopt(accepted.detach())
                await bridge.wait_adopted()
                reader, writer = await asyncio.open_connection(sock=client)
                writer.write(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                response = await asyncio.wait_for(reader.read(), 5)  # to EOF: closed
                assert response.startswith(b"HTTP/1.1 200 OK")
                writer.close()
        for _ in range(100):
            if carriers and carriers[0].closed:
                break
            await asyncio.sleep(0.01)
        assert [c.closed for c in carriers] == [True], "uvloop calls close() on it"
        assert bridge.dropped == 0
        await bridge.shutdown()

    bridge.run(scenario())


def test_under_uvloop_a_small_write_leaves_nothing_buffered():
    """A response that fits in the socket's buffer is written to the kernel by the
    ``write()`` call itself, so a connection whose response just completed shows an
    empty write buffer at once: what ``movable`` checks at a request's end
    (pmx.worker.handback ``after_response``). uvloop before 0.23 kept the bytes until
    the loop's next iteration, and a busy connection was never moved at the end of its
    request; pyproject.toml requires 0.23 for this."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            accepted, _addr = listener.accept()
            transport, _protocol = await loop.connect_accepted_socket(
                asyncio.Protocol, accepted)
            transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            buffered = transport.get_write_buffer_size()
            transport.close()
            client.close()
        assert buffered == 0, f"uvloop {uvloop.__version__} buffered {buffered} bytes"

    uvloop.run(scenario())
