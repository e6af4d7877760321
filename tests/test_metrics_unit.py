"""Request metrics in the worker, driven through a tiny ASGI app without sockets."""

from __future__ import annotations

import asyncio

from pmx.worker.metrics import BUCKETS, PROBE_EXTENSION, RequestMetrics, instrument


async def app(scope, receive, send):
    status = int(scope["path"].strip("/") or 200)
    if status == 599:
        raise RuntimeError("boom")
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def call(wrapped, path: str, extensions: dict | None = None) -> None:
    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        return None

    scope = {"type": "http", "path": path, "extensions": extensions or {}}
    try:
        asyncio.run(wrapped(scope, receive, send))
    except RuntimeError:
        pass


def test_counts_by_status_class_and_duration():
    metrics = RequestMetrics()
    wrapped = instrument(app, metrics)
    for path in ("/200", "/201", "/404", "/503", "/302", "/599"):
        call(wrapped, path)
    assert metrics.by_class == {"1xx": 0, "2xx": 2, "3xx": 1, "4xx": 1, "5xx": 2}
    assert metrics.count == 6
    assert metrics.buckets[-1] == 6  # every fast call is under the largest bucket
    assert metrics.buckets == sorted(metrics.buckets)  # cumulative
    assert len(metrics.buckets) == len(BUCKETS)


def test_probes_and_non_http_scopes_are_not_counted():
    metrics = RequestMetrics()
    wrapped = instrument(app, metrics)
    call(wrapped, "/200", {PROBE_EXTENSION: {}})
    assert metrics.count == 0


def test_observe_places_durations_in_buckets():
    metrics = RequestMetrics()
    metrics.observe(200, 0.003)
    metrics.observe(200, 0.3)
    metrics.observe(200, 30.0)
    assert metrics.buckets[0] == 1  # <= 5 ms
    assert metrics.buckets[BUCKETS.index(0.5)] == 2
    assert metrics.buckets[-1] == 2  # 30 s is above every bound: only in +Inf
    assert metrics.count == 3 and abs(metrics.sum - 30.303) < 1e-9
