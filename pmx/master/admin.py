"""The master's admin endpoint (``--admin HOST:PORT``): a tiny HTTP/1.1 server on the
master's own loop, separate from the app's port, for load balancers and monitoring.

    GET /health               200 while at least one worker is in rotation, else 503
    GET /workers              the workers as JSON (the status snapshot)
    GET /workers/<id>/health  that worker's state plus a live probe
    GET /metrics              Prometheus text format (prometheus_client)

Each request is answered and the connection closed; requests are small and few, so the
parser reads only the request line and skips the headers.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from pmx.channel import BUCKETS
from pmx.errors import BindError
from pmx.master.roles import Administered
from pmx.master.workers import WorkerState

log = logging.getLogger("pmx.master")

_WORKER_HEALTH = re.compile(r"/workers/(\d+)/health")
Response = tuple[int, str, bytes]


class Admin:
    def __init__(self, master: Administered) -> None:
        self.master = master
        self.server: asyncio.base_events.Server | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(master))  # type: ignore[arg-type]
        self.address = ""

    async def start(self, host: str, port: int) -> str:
        try:
            self.server = await asyncio.start_server(self._serve, host, port)
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise BindError(f"cannot listen on admin address {host}:{port}: {reason}.") from None
        sockname = self.server.sockets[0].getsockname()
        self.address = f"{host}:{sockname[1]}" if ":" not in host else f"[{host}]:{sockname[1]}"
        log.info("admin endpoint on http://%s", self.address)
        return self.address

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path = _request_line(head)
            status, kind, body = await self.route(method, path)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ValueError):
            status, kind, body = 400, "text/plain", b"bad request\n"
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  503: "Service Unavailable"}.get(status, "")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def route(self, method: str, path: str) -> Response:
        if method != "GET":
            return 405, "text/plain", b"only GET\n"
        path = path.partition("?")[0]
        if path == "/health":
            ready = self.master.rotation_size()
            body = {"status": "ok" if ready else "unavailable", "in_rotation": ready,
                    "state": self.master.state.value}
            return (200 if ready else 503), "application/json", _json(body)
        if path == "/workers":
            return 200, "application/json", _json(self.master.snapshot())
        match = _WORKER_HEALTH.fullmatch(path)
        if match:
            return await self._worker_health(int(match.group(1)))
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(self.registry)
        return 404, "text/plain", b"not found: try /health, /workers, /metrics\n"

    async def _worker_health(self, worker_id: int) -> Response:
        workers = [w for w in self.master.live if w.id == worker_id]
        if not workers:
            return 404, "application/json", _json({"error": f"no worker #{worker_id}"})
        worker = max(workers, key=lambda w: w.started_at)  # the newest, during a reload
        probe = "not ready"
        latency = None
        if worker.state is WorkerState.READY:
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            worker.probe_waiters.append(waiter)
            if worker.probe_sent_at is None:
                self.master.probe(worker)
            started = time.perf_counter()
            try:
                passed = await asyncio.wait_for(waiter, self.master.config.health_timeout)
                probe = "pass" if passed else "fail"
                latency = round((time.perf_counter() - started) * 1000, 3)
            except asyncio.TimeoutError:
                probe = "timeout"
            finally:  # a hung worker never answers: its waiters must not pile up
                if waiter in worker.probe_waiters:
                    worker.probe_waiters.remove(waiter)
        body = {
            "id": worker.id, "pid": worker.pid, "state": worker.state.value,
            "health": worker.health.state.value,
            "in_rotation": self.master.in_rotation(worker),
            "probe": probe, "probe_ms": latency,
        }
        return (200 if probe == "pass" else 503), "application/json", _json(body)


def _request_line(head: bytes) -> tuple[str, str]:
    method, path, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    return method, path


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=2).encode() + b"\n"


class _Collector:
    """Metric families built from the master's state at each scrape."""

    def __init__(self, master: Administered) -> None:
        self.master = master

    def collect(self) -> Iterator[Any]:
        master = self.master
        app = master.config.name
        workers = [w for w in master.live if w.state is not WorkerState.STOPPED]
        requests = CounterMetricFamily(
            "pmx_worker_requests", "HTTP responses by status class.",
            labels=["app", "worker", "pid", "status_class"])
        duration = HistogramMetricFamily(
            "pmx_request_duration_seconds", "Time to answer an HTTP request.",
            labels=["app", "worker", "pid"])
        connections = GaugeMetricFamily(
            "pmx_worker_connections", "Connections handed to the worker and still open.",
            labels=["app", "worker", "pid"])
        inflight = GaugeMetricFamily(
            "pmx_worker_requests_in_flight", "Requests being answered.",
            labels=["app", "worker", "pid"])
        threads = GaugeMetricFamily(
            "pmx_worker_threads_taken",
            "Threads of the app's pool taken: WSGI views, an ASGI app's synchronous code.",
            labels=["app", "worker", "pid"])
        rss_family = GaugeMetricFamily("pmx_worker_rss_bytes", "Resident memory of the worker.",
                                labels=["app", "worker", "pid"])
        cpu = CounterMetricFamily("pmx_worker_cpu_seconds", "CPU time used by the worker.",
                                  labels=["app", "worker", "pid"])
        healthy = GaugeMetricFamily(
            "pmx_worker_healthy", "1 if the worker passes its health checks and is in rotation.",
            labels=["app", "worker", "pid", "state"])
        moved = CounterMetricFamily(
            "pmx_worker_connections_moved",
            "Kept-alive connections the worker handed back, handed on to other workers.",
            labels=["app", "worker", "pid"])
        for w in workers:
            labels = [app, str(w.id), str(w.pid)]
            moved.add_metric(labels, w.moved)
            by_class = w.metrics.get("by_class", {})
            for status_class in ("1xx", "2xx", "3xx", "4xx", "5xx"):
                requests.add_metric([*labels, status_class], by_class.get(status_class, 0))
            if w.metrics:
                buckets = [(str(b), c) for b, c in zip(BUCKETS, w.metrics["buckets"], strict=True)]
                buckets.append(("+Inf", w.metrics["count"]))
                duration.add_metric(labels, buckets, w.metrics["sum"])
            connections.add_metric(labels, w.load)
            inflight.add_metric(labels, w.report.inflight)
            threads.add_metric(labels, w.report.threads_taken)
            rss_family.add_metric(labels, master.sampler.rss(w.pid))
            cpu.add_metric(labels, master.sampler.cpu_seconds(w.pid))
            in_rotation = master.in_rotation(w)
            healthy.add_metric([*labels, w.state.value], 1 if in_rotation else 0)
        restarts = CounterMetricFamily("pmx_worker_restarts", "Worker replacements by reason.",
                                       labels=["app", "reason"])
        reasons = ("crash", "boot", "signal", "reload", "memory", "max-requests", "health",
                   "scale")
        for reason in reasons:
            restarts.add_metric([app, reason], master.history.by_reason.get(reason, 0))
        yield from (requests, duration, connections, inflight, threads, rss_family, cpu,
                    healthy, restarts, moved)

