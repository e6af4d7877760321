"""The workload families, as data.

A scenario is a set of clients run together against one server for a while: each
``Client`` is one wrk process (bench/count.lua) with its path, its connection mode and
its number of connections. The clients marked ``fast`` are the ones whose throughput and
latency are reported; the others are the load the fast requests have to get past
(requests that block the event loop, burn CPU, sleep, or take heavy-tailed times). A
family is one table of the report and holds one scenario or a few variants of one.

Every scenario names the figures its table shows, the targets pmx is held to (ratios
to ``uvicorn --workers`` in the same run, unless ``relative`` is false) and the headline
figures on which pmx's other policies must not beat its default one.

Figures (keys of ``bench/figures.py``): ``rps`` fast requests per second; ``p50``..
``p99`` wrk's latency percentiles of the fast requests; ``rp50``..``rp99`` the same,
timed per request; ``cpu`` server CPU per request; ``spread`` max/min requests per
worker; ``conn_spread`` max/min connections per worker; ``load_rps`` responses per
second to the other clients.
"""

from __future__ import annotations

from dataclasses import dataclass

KEEP = "keep-alive"
NEW = "new-connection"


@dataclass(frozen=True)
class Client:
    path: str
    mode: str  # KEEP or NEW
    count: int | str  # connections; "workers-1": one fewer than the server has workers
    fast: bool = False  # its figures are the ones reported
    delay_ms: int = 0  # think time before each request

    def connections(self, workers: int) -> int:
        if self.count == "workers-1":
            return max(1, workers - 1)
        if isinstance(self.count, int):
            return self.count
        raise ValueError(f'client count "{self.count}" must be an int or "workers-1"')

    def describe(self, workers: int) -> str:
        n = self.connections(workers)
        think = f", {self.delay_ms} ms think time" if self.delay_ms else ""
        return f"{n} {self.mode} client{'s' if n > 1 else ''} on {self.path}{think}"


@dataclass(frozen=True)
class Target:
    figure: str
    op: str  # ">=" or "<="
    limit: float
    relative: bool = True  # a ratio to uvicorn --workers; else the figure itself


@dataclass(frozen=True)
class Scenario:
    name: str
    family: str
    about: str  # what it puts on the server, for the report
    clients: tuple[Client, ...] = ()
    kind: str = "wrk"  # "wrk": clients run for `duration`; "connections": one burst
    app: str = "asgi"  # bench/app.py, or "wsgi": bench/wsgi_app.py
    duration: int = 10  # seconds, in a full run
    min_workers: int = 1  # runs at every worker count asked for from this one on
    figures: tuple[str, ...] = ()
    targets: tuple[Target, ...] = ()
    headline: tuple[str, ...] = ("rps", "rp99")  # where other policies must not win
    connections: int = 0  # the "connections" kind: how many are opened at once

    def runs_at(self, workers: int) -> bool:
        return workers >= self.min_workers


FAST = Client("/fast", NEW, 16, fast=True)

LATENCY = ("p50", "p90", "p99", "rp50", "rp90", "rp99")
MIXED_FIGURES = ("rps", *LATENCY, "cpu", "load_rps")
THROUGHPUT_FIGURES = ("rps", "cpu", *LATENCY, "spread")

FAST_TARGETS = (
    Target("rps", ">=", 1.0),
    Target("p90", "<=", 1.0), Target("p99", "<=", 1.0),
    Target("rp90", "<=", 1.0), Target("rp99", "<=", 1.0),
)
THROUGHPUT_TARGETS = (*FAST_TARGETS, Target("cpu", "<=", 1.0))
STRICT_TARGETS = (
    Target("rps", ">=", 1.0),
    Target("p90", "<=", 1.0), Target("p99", "<=", 0.5),
    Target("rp90", "<=", 1.0), Target("rp99", "<=", 0.5),
)


def mixed(name: str, family: str, about: str, *load: Client, app: str = "asgi",
          min_workers: int = 1, targets: tuple[Target, ...] = FAST_TARGETS,
          duration: int = 10) -> Scenario:
    """A load plus 16 new-connection clients on /fast, whose figures are reported."""
    return Scenario(name, family, about, (*load, FAST), app=app, min_workers=min_workers,
                    figures=MIXED_FIGURES, targets=targets, duration=duration)


SCENARIOS: list[Scenario] = [
    Scenario("keepalive", "keepalive", "fast requests on kept-alive connections",
             (Client("/fast", KEEP, 64, fast=True),),
             figures=THROUGHPUT_FIGURES, targets=THROUGHPUT_TARGETS, headline=("rps", "cpu")),
    Scenario("newconn", "newconn", "fast requests, each on a new connection",
             (Client("/fast", NEW, 16, fast=True),),
             figures=THROUGHPUT_FIGURES, targets=THROUGHPUT_TARGETS, headline=("rps", "cpu")),
    mixed("block-pinned", "block-pinned",
          "one kept-alive connection looping on /slow (50 ms of time.sleep in async code: "
          "its worker's event loop is blocked all the time)",
          Client("/slow", KEEP, 1), targets=STRICT_TARGETS),
    mixed("block-new", "block-new",
          "one client looping on /slow, a new connection for each request, so the server "
          "picks the worker each blocking request lands on",
          Client("/slow", NEW, 1)),
    mixed("blockers-2", "blockers",
          "2 kept-alive connections looping on /slow (1 is the block-pinned family)",
          Client("/slow", KEEP, 2)),
    mixed("blockers-n-1", "blockers",
          "workers-1 kept-alive connections looping on /slow (at 2 workers that is the "
          "block-pinned family, so this runs from 3 workers on)",
          Client("/slow", KEEP, "workers-1"), min_workers=3),
    mixed("cpu", "cpu", "2 clients looping on /cpu (10 ms of CPU each), new connections",
          Client("/cpu", NEW, 2)),
    mixed("sleep", "sleep",
          "128 kept-alive connections looping on /sleep?ms=100 (await asyncio.sleep: "
          "many requests in flight, the loop free)",
          Client("/sleep?ms=100", KEEP, 128)),
    Scenario("awaiting", "awaiting",
             "128 kept-alive connections looping on /sleep?ms=100 and nothing else: what "
             "holding many requests that await (long polls, calls to a slow upstream) "
             "costs the server",
             (Client("/sleep?ms=100", KEEP, 128, fast=True),),
             figures=("cpu", "rp50", "rp99"), targets=(Target("cpu", "<=", 1.0),),
             headline=("cpu",)),
    mixed("wsgi", "wsgi",
          "the WSGI app (bench/wsgi_app.py): 16 clients on /slow, whose view sleeps "
          "50 ms in the thread pool (10 threads per worker), new connections; /fast also "
          "runs in that pool",
          Client("/slow", NEW, 16), app="wsgi"),
    mixed("tail", "tail",
          "32 kept-alive connections on /tail, 30 ms think time between requests: the "
          "event loop is blocked for a heavy-tailed time (median 0.19 ms, p99 7 ms, "
          "up to 100 ms)",
          Client("/tail", KEEP, 32, delay_ms=30), targets=STRICT_TARGETS, duration=15),
    Scenario("spread", "spread",
             "64 keep-alive connections opened at once right after the server is up "
             "(no warm-up), one request on each",
             kind="connections", connections=64, figures=("conn_spread",),
             targets=(Target("conn_spread", "<=", 1.05, relative=False),),
             headline=("conn_spread",)),
]

@dataclass(frozen=True)
class Moving:
    """A scenario of the ``rebalance`` family (pmx only, bench/rebalance.py): a pool of
    kept-alive connections through an ``action``, with ``--rebalance`` on and off."""

    name: str
    about: str
    action: str  # "scale" (from workers to `to`), "reload", "steady" (wrk throughput)
    workers: int = 2
    to: int = 4
    connections: int = 64
    duration: int = 10  # "steady": seconds of wrk in a full run


REBALANCE: tuple[Moving, ...] = (
    Moving("rebalance-scale", "64 kept-alive connections looping on /fast, then `pmx scale` "
           "from 2 to 4 workers", "scale"),
    Moving("rebalance-reload", "64 kept-alive connections looping on /fast through "
           "`pmx reload` of 2 workers", "reload", to=2),
    Moving("rebalance-steady", "wrk, 64 kept-alive connections on /fast, 2 workers, nothing "
           "scaled or reloaded: what rebalancing costs when nothing moves", "steady"),
)

FAMILIES: dict[str, str] = {
    "keepalive": "Fast keep-alive",
    "newconn": "Fast new-connection",
    "block-pinned": "Loop-blocking requests on a pinned keep-alive connection, plus fast clients",
    "block-new": "Loop-blocking requests on new connections, plus fast clients",
    "blockers": "Several blocking clients, plus fast clients",
    "cpu": "CPU-bound requests mixed with fast",
    "sleep": "Awaiting requests mixed with fast",
    "awaiting": "Awaiting requests alone: the cost of holding them",
    "wsgi": "A WSGI view blocking in the thread pool, plus fast clients",
    "tail": "Heavy-tailed request durations, plus fast clients",
    "spread": "Connection spread right after start",
    "rebalance": "Kept-alive connections through scale-up and reload (pmx only)",
}


def by_name() -> dict[str, Scenario]:
    return {s.name: s for s in SCENARIOS}


def select(only: list[str], workers: list[int]) -> list[Scenario]:
    """The scenarios of the families (or scenarios) named, run at one of ``workers``."""
    names = set(FAMILIES) | set(by_name())
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(f"unknown family or scenario: {', '.join(unknown)} "
                         f"(choose from {', '.join(FAMILIES)})")
    chosen = [s for s in SCENARIOS if not only or s.family in only or s.name in only]
    return [s for s in chosen if any(s.runs_at(n) for n in workers)]
