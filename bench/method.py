"""The report's last section: how the figures were measured."""

from __future__ import annotations

from bench.config import Config
from bench.load import WRK_TIMEOUT
from bench.pmxd import CHURN_CLOSE_CONNECTIONS, CHURN_KEEPALIVE_CONNECTIONS
from bench.servers import Server


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def method(cfg: Config, skipped: list[Server], argv: list[str], seconds: float,
           daemon_workers: int) -> list[str]:
    per = (f"{cfg.duration} s" if cfg.duration else
           "the scenario's own duration (10 s, 15 s for `tail`)")
    out = ["## How it is measured\n",
           f"Command: `{' '.join(argv)}`" + (f", {_duration(seconds)} in all" if seconds else "")
           + ".\n"]
    out.append(
        "For each worker count and each repeat, the harness starts every server afresh on "
        "its own free port, polls until every worker has answered (concurrent requests to "
        "/slow; a pmx master that packs keeps its spare workers for later, so once no new "
        "one has answered for 2 s, its processes are waited on to go idle instead) and "
        f"warms each up with {cfg.warmup} s of keep-alive load. Then it runs each "
        f"scenario for {per} on one server after the other (the order rotates between "
        "repeats), so the servers compared in one scenario are measured within minutes of "
        "each other; the servers not under load meanwhile are idle. In a scenario the "
        "other clients start first and stop when the measured ones are done. The `wsgi` "
        "family gets its own set of servers serving bench/wsgi_app.py, all through "
        "a2wsgi's `WSGIMiddleware` with its defaults: the others are given the wrapped app "
        "(`bench.wsgi_app:asgi`), pmx the WSGI callable, which it detects and wraps in the "
        "same way. The `spread` family starts each server on its own, waits until it "
        "answers one request and its processes are idle (they used under 5% of a core "
        "over 0.25 s: every worker has booted), opens its connections at once with no "
        "warm-up, sends one request on each and stops the server.\n")
    out.append(
        f"wrk runs with {cfg.threads} thread(s) per client and `--timeout {WRK_TIMEOUT}` on "
        "the same cores as the servers, so each server shares the CPU with its load "
        "generator. The servers: `pmx run APP -i N --no-access-log --balance POLICY`, "
        "`uvicorn APP --workers N --no-access-log`, `gunicorn APP -k "
        "uvicorn_worker.UvicornWorker -w N` (no access log unless asked for), `granian "
        "--interface asgi --workers N --no-access-log APP`.\n")
    if skipped:
        out.append("Not measured: " + "; ".join(f"{s.label} ({s.missing})" for s in skipped)
                   + ".\n")
    if cfg.quiet_wait > 0 or cfg.retries:
        shared = (
            "The machine may be shared. Before each measurement the harness waits (up to "
            f"{cfg.quiet_wait:g} s) until other processes use less than {cfg.busy_cores:g} "
            f"cores, and a measurement during which they used more is taken again (up to "
            f"{cfg.retries} more times), keeping the quietest attempt. ")
    else:
        shared = ("The machine may be shared; this run neither waited for a quiet machine "
                  "nor measured again what other processes disturbed. ")
    out.append(
        shared + "*CPU used outside the "
        "benchmark* is all process CPU time on the machine minus the harness, wrk and the "
        "server's own processes; on a virtual machine it includes the time the hypervisor "
        "gave to other machines (*stolen*), during which neither the server nor wrk could "
        "run. Throughput moves with it; *server CPU per request* (user + system time of "
        "all the server's processes, divided by all the requests served in the scenario) "
        "moves much less, and compares what each server spends on the same work.\n")
    out.append(
        "Latency. The figures marked *wrk* are wrk's own percentiles, which wrk 4 computes "
        "after correcting its histogram for coordinated omission: for every response "
        "slower than twice the average interval between two requests of a connection, it "
        "adds samples as if the requests that connection did not send meanwhile had been "
        "as slow. With a few slow responses among many fast ones this raises the upper "
        "percentiles far above those of the responses actually received, and by an amount "
        "that depends on the server's own throughput. The figures marked *per request* are "
        "the latencies of the responses actually received, timed by count.lua (`timed`: "
        "each request carries its start time in an `x-echo` header that the app "
        "returns).\n")
    if cfg.daemon:
        out.append(
            f"pmx only, under its daemon with {daemon_workers} workers, once per repeat for "
            "each policy. **Reload**: `pmx start` in a temporary `PMX_HOME`, "
            f"{CHURN_KEEPALIVE_CONNECTIONS} keep-alive and {CHURN_CLOSE_CONNECTIONS} "
            "new-connection clients on /fast for a steady window, then the same load from "
            "half a window before `pmx reload` until the replaced workers have exited, plus "
            "half a window; then `pmx kill`. **Memory restarts**: the same load plus a "
            f"client requesting /leak (1 MiB kept per request) {cfg.leak_rate:g} times a "
            f"second on new connections, with `--max-memory {cfg.max_memory}`, until "
            f"{cfg.mem_restarts} replacements with reason `memory` show in `pmx describe "
            f"--json` (at most {cfg.mem_timeout} s); then the /leak client stops and the "
            "/fast load goes on until every replaced worker has exited, plus 1 s. A failed "
            "request is a non-2xx response or a socket error (connect, read, write, timeout) "
            "seen by wrk or by the /leak client. Master RSS is measured with psutil after "
            "the load; `pmx status` is timed as a whole command (interpreter start "
            "included).\n")
    return out
