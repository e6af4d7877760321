"""The one module that touches uvicorn internals.

pmx does not let uvicorn listen: the worker receives already-accepted sockets and hands
each to ``loop.connect_accepted_socket`` with uvicorn's own HTTP protocol class, so
keep-alive, WebSocket upgrades, ``scope["client"]``, limits and logging behave exactly as
in uvicorn. What that needs from uvicorn beyond its public ``Config``/``Server`` API:

- ``Config.load()`` sets ``http_protocol_class`` and ``lifespan_class``;
- protocol classes are built as ``cls(config=, server_state=, app_state=, _loop=)``;
- ``Server.server_state`` has ``connections`` and ``tasks`` sets that protocols
  ``add``/``discard`` themselves and their request tasks to, and ``total_requests``;
- ``Server.on_tick`` refreshes the default (date) headers; ``Server.shutdown`` drains;
- an HTTP protocol's ``cycle`` stays ``None`` until its first request is parsed; a
  cycle has ``response_complete``, ``keep_alive`` (False: the response closes) and
  ``more_body`` (True while its request's body is arriving; pmx.worker.heads);
- the ``send`` a request's app gets is a bound method of its cycle, and the cycle's
  ``transport`` is its protocol's ``transport`` (what names a connection);
- an HTTP protocol's ``timeout_keep_alive_task`` is set after a response and cleared
  by the first byte of the next request; its ``cycle`` is replaced when that request's
  head is complete (what tells a connection waiting for a head);
- ``uvicorn._compat.asyncio_run`` runs the worker loop with uvicorn's loop factory;
- an httptools protocol's ``pipeline`` holds requests parsed ahead of their turn, a
  cycle's ``more_body`` turns False once its request is parsed whole, and closing a
  transport closes its fd without ``shutdown()`` (what ``detach`` relies on);
- and of uvloop, when it runs the loop: ``connect_accepted_socket`` reads only
  ``family``, ``type`` and ``fileno()`` of what it is given, lets libuv own the fd and
  calls its ``close()`` when the transport closes (``_HandedFd``); and a ``write()``
  that fits in the socket's buffer goes to the kernel within the call, so a response
  just completed leaves the write buffer empty (``movable`` at a request's end; uvloop
  before 0.23 kept it until the loop's next iteration).

``tests/test_bridge.py`` checks each of these so that an upgrade that changes them fails
loudly, and pyproject pins uvicorn and uvloop to the tested ranges.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import os
import socket
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import uvicorn
from uvicorn._compat import asyncio_run
from uvicorn.config import LOGGING_CONFIG

from pmx.config import AppConfig
from pmx.worker.heads import head_limited, linger_close
from pmx.worker.metrics import PROBE_EXTENSION


class _NotifyingSet(set):  # type: ignore[type-arg]
    """A set that calls back on add/discard, so load changes are seen as they happen."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        super().__init__()
        self.on_change = on_change

    def add(self, item: Any) -> None:
        super().add(item)
        self.on_change()

    def discard(self, item: Any) -> None:
        super().discard(item)
        self.on_change()


class _Connections(_NotifyingSet):
    """The open connections (protocols), and ``added``: how many were ever opened.
    ``on_close`` first hears of each that closes, as ``connection_of`` names it."""

    def __init__(self, on_change: Callable[[], None],
                 on_close: Callable[[object], None] = lambda connection: None) -> None:
        super().__init__(on_change)
        self.on_close = on_close
        self.added = 0

    def add(self, item: Any) -> None:
        set.add(self, item)
        self.added += 1
        self.on_change()

    def discard(self, item: Any) -> None:
        set.discard(self, item)
        self.on_close(getattr(item, "transport", None))
        self.on_change()


_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8"
                    b"\r\nconnection: close\r\ncontent-length: 16\r\n\r\nRequest Timeout\n")


def _handed_socket_class(family: int) -> type[socket.socket]:
    """A socket class whose ``family`` and ``type`` are plain class attributes: the
    socket module's properties build an enum member on every read (about 0.8 µs), and
    ``loop.connect_accepted_socket`` reads them three times per connection."""
    return type("HandedSocket", (socket.socket,), {
        "__slots__": (), "family": socket.AddressFamily(family),
        "type": socket.SOCK_STREAM,
    })


class _HandedFd:
    """What uvloop's ``connect_accepted_socket`` needs of a socket, and no more.

    uvloop reads ``family`` and ``type``, gives ``fileno()`` to libuv, which owns the
    fd from then on and closes it with the transport, and keeps the object to
    ``close()`` then (a ``socket.socket`` it would ``detach()``). Its transport's
    ``socket`` extra is a socket-like object of uvloop's own, not this one. So a
    ``socket.socket`` (about 1 µs per connection to build and detach, against 0.3 µs
    for this) buys nothing there. ``closed``: uvloop has let go of the fd (or it was
    never handed over: see ``UvicornBridge._step``). asyncio's loop needs a real socket;
    it gets one."""

    __slots__ = ("fd", "closed")
    family = socket.AF_INET
    type = socket.SOCK_STREAM

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        self.closed = True


def _handed_fd_class(family: int) -> type[_HandedFd]:
    return type("HandedFd", (_HandedFd,), {"__slots__": (), "family": family})


def connection_of(send: Any) -> object | None:
    """The connection (its transport) a request's ``send`` answers on; None once it is
    closing."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or transport.is_closing():
        return None
    return transport


def log_config(worker_id: int, tag: bool = True) -> dict[str, Any]:
    """uvicorn's logging config, with the worker id in every line if ``tag``."""
    cfg = copy.deepcopy(LOGGING_CONFIG)
    for formatter in cfg["formatters"].values() if tag else ():
        prefix = "%(levelprefix)s"
        formatter["fmt"] = formatter["fmt"].replace(prefix, f"{prefix} #{worker_id}")
    return cfg


class _ErrorCapture(logging.Handler):
    """Keeps the text of ERROR records logged by uvicorn during lifespan startup."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.texts: list[str] = []
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))


class UvicornBridge:
    def __init__(
        self,
        config: AppConfig,
        app: Any,
        worker_id: int,
        on_change: Callable[[], None] = lambda: None,
        tag_logs: bool = True,
        on_close: Callable[[object], None] | None = None,
    ) -> None:
        """``on_change``: a connection or request came or went. ``on_close``: this
        connection (as ``connection_of`` names it) closed."""
        self.uv_config = uvicorn.Config(
            app,
            interface="auto",
            lifespan="auto",
            log_config=log_config(worker_id, tag_logs),
            log_level=config.log_level,
            access_log=config.access_log,
            timeout_keep_alive=config.timeout_keep_alive,
            proxy_headers=config.proxy_headers,
            forwarded_allow_ips=config.forwarded_allow_ips,
            timeout_graceful_shutdown=int(config.graceful_timeout) or None,
        )
        self.config = config
        self.uv_config.load()
        if config.max_header_size:
            self.uv_config.http_protocol_class = head_limited(
                self.uv_config.http_protocol_class, config.max_header_size)
        # Only httptools connections are moved (``movable``): pmx does not choose h11.
        http_class = self.uv_config.http_protocol_class
        httptools = any(c.__name__ == "HttpToolsProtocol" for c in http_class.__mro__)
        self._http_class: Any = http_class if httptools else None
        self.server = uvicorn.Server(self.uv_config)
        self.server.servers = []
        state = self.server.server_state
        self._connections = (_Connections(on_change) if on_close is None
                             else _Connections(on_change, on_close))
        self._sets = self._connections, _NotifyingSet(on_change)
        state.connections, state.tasks = self._sets
        self._heads: dict[Any, float] = {}  # connections waiting for a head, and since
        self._looked: weakref.WeakSet[Any] = weakref.WeakSet()  # open at settle()
        self.received = 0  # fds handed in
        self.dropped = 0  # of those, the ones that failed before their connection opened
        self._handed: Callable[..., Any] | None = None  # see adopt()
        self._family = socket.AF_INET
        # connect_accepted_socket coroutines not finished yet, and what each awaits
        self._adopting: dict[Coroutine[Any, Any, Any], Any] = {}
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by startup()

    def run(self, main: Coroutine[Any, Any, int]) -> int:
        """Run ``main`` on uvicorn's event loop (uvloop when installed)."""
        return asyncio_run(main, loop_factory=self.uv_config.get_loop_factory())

    async def startup(self) -> str | None:
        """Run lifespan startup. Returns None on success, else the error text."""
        self.loop = asyncio.get_running_loop()  # cached: each lookup is a getpid() call
        capture = _ErrorCapture()
        error_logger = logging.getLogger("uvicorn.error")
        error_logger.addHandler(capture)
        try:
            self.server.lifespan = self.uv_config.lifespan_class(self.uv_config)
            await self.server.lifespan.startup()
        finally:
            error_logger.removeHandler(capture)
        if self.server.lifespan.should_exit:
            # uvicorn logs the app's message (or traceback), then a generic line.
            texts = [t for t in capture.texts if t != "Application startup failed. Exiting."]
            return "\n".join(texts) or "Application startup failed."
        self.server.started = True
        await self.server.on_tick(0)
        return None

    async def tick(self, counter: int) -> None:
        await self.server.on_tick(counter)

    def adopt(self, fd: int) -> None:
        """Serve an accepted connection received from the master.

        ``connect_accepted_socket`` is a coroutine, but everything it does before its
        one ``await`` (build the protocol, open the transport, schedule
        ``connection_made``, which starts reading) needs no waiting. So it is stepped
        here, in the channel callback, rather than wrapped in a task that would first
        wait for the next loop iteration: a connection is served as soon after its
        arrival as one the loop accepted itself. The rest (the await) is resumed from
        a done callback.
        """
        self.received += 1
        handed = self._handed
        if handed is None:  # the first one: let the socket module ask the kernel
            first = socket.socket(fileno=fd)
            family = self._family = first.family
            first.detach()
            if type(self.loop).__module__.startswith("uvloop"):
                handed = self._handed = _handed_fd_class(family)
            else:
                cls = _handed_socket_class(family)
                handed = self._handed = functools.partial(cls, family, socket.SOCK_STREAM, 0)
        # The same listener's: its family not asked again with getsockopt().
        # No setblocking(): both uvloop (uv_tcp_open) and asyncio make it non-blocking.
        sock: Any = handed(fd)
        self._step(self.loop.connect_accepted_socket(self._protocol, sock), sock=sock)

    def _step(self, coro: Coroutine[Any, Any, Any], _: Any = None, sock: Any = None) -> None:
        try:
            future = coro.send(None)
        except StopIteration:
            self._adopting.pop(coro, None)
            return
        except Exception as exc:
            self._adopting.pop(coro, None)
            self.dropped += 1
            if isinstance(sock, _HandedFd) and not sock.closed:
                # Failed at the first step, where uvloop opens its transport on the fd:
                # closed here, as a socket object would be once collected. (At a later
                # step the transport has closed it, and ``sock`` is not passed.)
                sock.closed = True
                try:
                    os.close(sock.fd)
                except OSError:
                    pass
            logging.getLogger("uvicorn.error").warning(
                "could not serve a handed-off connection: %s", exc
            )
            return
        self._adopting[coro] = future
        resume = functools.partial(self._step, coro)
        if hasattr(future, "add_done_callback"):
            future.add_done_callback(resume)
        else:  # a bare yield (asyncio.sleep(0)): go on at the next iteration
            self.loop.call_soon(resume)

    def _protocol(self) -> asyncio.Protocol:
        server = self.server
        return self.uv_config.http_protocol_class(  # type: ignore[call-arg]
            config=self.uv_config,
            server_state=server.server_state,
            app_state=server.lifespan.state,
            _loop=self.loop,
        )

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a connection or request comes or goes."""
        for notifying in self._sets:
            notifying.on_change = callback

    def counters(self) -> tuple[int, int, int, int]:
        """``load()`` as a plain tuple, for the per-request hot path."""
        state = self.server.server_state
        # Taken in: fds now open connections or dropped. Not ``received``: between an fd's
        # arrival and its connection_made (the next loop iteration) it would count in
        # neither ``sent - taken`` nor the open connections, and the master would see
        # the worker's load dip.
        taken = self._connections.added + self.dropped
        return taken, len(state.connections), len(state.tasks), state.total_requests

    def close_slow_heads(self, now: float, limit: float) -> int:
        """Answer 408 and close every connection whose request head has been arriving
        (or that has sent nothing since it opened) for more than ``limit`` seconds, as
        seen at successive calls; returns how many. uvicorn stops its keep-alive timer
        at a request's first byte and has no limit of its own, so a client sending a
        head byte by byte (slowloris) would hold its connection, and a drain, for ever.
        Called once a second: its cost is a look at each connection, none per request.
        """
        waiting = self._heads
        seen = {}
        closed = 0
        protocol: Any
        for protocol in self.server.server_state.connections:
            if not hasattr(protocol, "cycle") or protocol.timeout_keep_alive_task is not None:
                continue  # not HTTP (a WebSocket), or idle between requests
            if getattr(protocol, "_refused", False):
                continue  # answered (408, 431) and closing
            cycle: Any = protocol.cycle
            if cycle is not None and not cycle.response_complete:
                continue  # a request is being served
            since = waiting.get(protocol, now)
            if now - since > limit:
                if not protocol.transport.is_closing():
                    linger_close(protocol, _REQUEST_TIMEOUT)
                    closed += 1
                continue
            seen[protocol] = since
        self._heads = seen
        return closed

    def movable(self, protocol: Any) -> bool:
        """Kept alive and idle at a request boundary, so its fd may move to another
        worker (pmx.worker.handback): an HTTP/1 connection (not a WebSocket, which has
        another protocol) whose last response is complete and flushed to the kernel,
        whose request was parsed whole, and of which not one byte has been read since
        (the keep-alive timer runs; the first byte of a request stops it). A connection
        with half a request read, or one that has not sent its first request yet (its
        parser may hold part of a head), is not."""
        if type(protocol) is not self._http_class or protocol.timeout_keep_alive_task is None:
            return False
        cycle = protocol.cycle
        transport = protocol.transport
        return (cycle is not None and cycle.response_complete and not cycle.more_body
                and cycle.keep_alive and not protocol.pipeline
                and not transport.is_closing() and not transport.get_write_buffer_size())

    def detach(self, protocol: Any) -> int | None:
        """Take a ``movable`` connection out of this worker; return a new fd for its
        socket. Reading stops first, in the same loop step as the ``movable`` check, so
        no byte the client sends from now on is read here: it waits in the kernel for
        the worker that adopts the fd. Closing the transport closes only this worker's
        fd (no ``shutdown()``): the socket lives on in the returned one. uvicorn then
        forgets the connection as it does any that closed. None, and the connection left
        as it was, if the fd cannot be duplicated (the worker is at its fd limit)."""
        transport = protocol.transport
        try:
            fd = os.dup(transport.get_extra_info("socket").fileno())
        except OSError:
            return None
        transport.pause_reading()
        transport.close()
        return fd

    def connections(self) -> list[Any]:
        return list(self.server.server_state.connections)

    def settle(self) -> int:
        """How many open connections were open at the last call too: called every
        SETTLE seconds (pmx.loadslot), the kept-alive ones, not those opened for one
        request. A look at each connection, none per request. Weak references: the
        connections closed since are not kept alive for it."""
        looked = self._looked
        now = self.server.server_state.connections
        settled = sum(1 for connection in now if connection in looked)
        self._looked = weakref.WeakSet(now)
        return settled

    async def probe(self, path: str, timeout: float) -> bool:
        """GET ``path`` through the app (its middleware included); 2xx/3xx is healthy."""
        statuses: list[int] = []
        done = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if not done.is_set():
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # never: the app may wait for a disconnect
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        path_only, _, query = path.partition("?")
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path_only, "raw_path": path_only.encode(), "query_string": query.encode(),
            "root_path": "", "headers": [(b"host", b"pmx-health"), (b"user-agent", b"pmx")],
            "client": ("127.0.0.1", 0), "server": None,
            "state": self.server.lifespan.state.copy(),
            "extensions": {PROBE_EXTENSION: {}},
        }
        app = self.uv_config.loaded_app
        try:
            await asyncio.wait_for(app(scope, receive, send), timeout)
        except Exception:  # the app raised or timed out: unhealthy
            return False
        return bool(statuses) and 200 <= statuses[0] < 400

    async def drain(self, limit: float, hand_back: Callable[[], None] | None = None) -> None:
        """Let open connections end on their own, up to ``limit`` seconds.

        Closing an idle keep-alive connection races with a client that is sending its
        next request on it. So instead, every response while draining carries
        ``Connection: close`` (pmx.worker.hooks), and connections that stay idle are
        closed by uvicorn's keep-alive timeout, as in normal operation. New connections
        that have not sent their first request yet are treated the same way. As a
        backstop for responses that had started before the drain, their cycle is told
        not to keep the connection alive.

        With ``hand_back`` (rebalancing, pmx.worker.handback), connections are handed
        back to the master instead: it is called every poll to hand back those idle now.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        connections = self.server.server_state.connections
        while connections and loop.time() < end:
            if hand_back is not None:
                hand_back()
                await asyncio.sleep(0.01)
                continue
            for connection in list(connections):
                cycle = getattr(connection, "cycle", None)
                if cycle is not None and not cycle.response_complete:
                    cycle.keep_alive = False
            await asyncio.sleep(0.01)

    async def wait_adopted(self) -> None:
        while self._adopting:
            futures = [f for f in self._adopting.values() if asyncio.isfuture(f)]
            if futures:
                await asyncio.wait(futures)
            await asyncio.sleep(0)  # let the done callbacks finish their coroutines

    async def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close idle connections, finish in-flight
        requests, then lifespan shutdown. The master enforces the time limit."""
        await self.server.shutdown()
