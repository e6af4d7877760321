"""The master's worker lifecycle in-process, with fake workers (tests/fakes.py).

Crash, respawn, boot failure, errored, reload, recycling, scaling and their
interleavings, each driven step by step: the test decides when a worker becomes ready,
dies or leaves. The real-process tests (test_engine, test_reload, test_recycle...) run
the same paths end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pmx.config import AppConfig
from pmx.errors import AppErrored, BootError, PmxError
from pmx.master.admin import Admin
from pmx.master.arbiter import Master
from pmx.master.reload import ReloadError
from pmx.master.slots import SlotState, SlotTaken
from pmx.master.states import AppState
from pmx.master.workers import WorkerState
from tests.fakes import Fleet, events_of, until


class Run:
    def __init__(self, master: Master, fleet: Fleet, task: asyncio.Task[None]) -> None:
        self.master = master
        self.fleet = fleet
        self.task = task
        self.events = events_of(master)

    def pids(self, *states: WorkerState) -> dict[int, list[int]]:
        """Slot id -> pids of the live workers in those states (all if none given)."""
        slots: dict[int, list[int]] = {}
        for w in sorted(self.master.live, key=lambda w: (w.id, w.pid)):
            if not states or w.state in states:
                slots.setdefault(w.id, []).append(w.pid)
        return slots

    def serving(self) -> dict[int, list[int]]:
        """Slot id -> pids of the workers starting or ready (not draining)."""
        return self.pids(WorkerState.STARTING, WorkerState.READY)

    def reaped(self, pid: int) -> bool:
        """The master has seen the worker ``pid`` exit."""
        return all(w.pid != pid for w in self.master.live)

    def in_rotation(self) -> list[int]:
        return sorted(w.pid for w in self.master.live if self.master.in_rotation(w))

    async def settled(self, workers: int) -> None:
        """Every slot has one worker, ready and in rotation, and nothing else runs."""
        def ok() -> bool:
            return (len(self.in_rotation()) == workers
                    and len(self.fleet.running()) == workers
                    and all(len(p) == 1 for p in self.serving().values()))
        await until(ok, what=f"{workers} workers in rotation and nothing else")


def config(**settings: Any) -> AppConfig:
    base: dict[str, Any] = {"app": "tests.apps.plain:app", "bind": "127.0.0.1:0",
                            "graceful_timeout": 2.0}
    return AppConfig(**{**base, **settings}).validate()


@contextlib.asynccontextmanager
async def running(fleet: Fleet | None = None, **settings: Any) -> AsyncIterator[Run]:
    fleet = fleet or Fleet()
    master = Master(config(**settings), launcher=fleet, title=False)
    run = Run(master, fleet, asyncio.get_running_loop().create_task(master.serve()))
    try:
        yield run
    finally:
        if not run.task.done():
            master.begin_stop("test over")
        with contextlib.suppress(PmxError):
            await asyncio.wait_for(run.task, 5)
        fleet.close()


def scenario(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 20))


# ---------------------------------------------------------------------- start, crash


def test_workers_start_and_the_app_announces_itself_once():
    async def body() -> None:
        async with running(workers=3) as run:
            await run.settled(3)
            assert run.master.state is AppState.RUNNING
            assert sorted(run.serving()) == [1, 2, 3]
            assert [kind for kind, _ in run.events] == ["ready"]
            assert run.events[0][1]["bind"].startswith("127.0.0.1:")
        assert run.master.state is AppState.STOPPED
        assert run.fleet.running() == []
        assert all(f.stopped for f in run.fleet.started)  # drained: STOP, not a kill
    scenario(body)


def test_a_crashed_worker_is_respawned_in_its_slot_with_a_backoff():
    async def body() -> None:
        async with running(workers=2) as run:
            await run.settled(2)
            first = run.fleet.running(1)[0]
            first.exit(-9)
            await until(lambda: 1 not in run.serving(), what="the crash to be seen")
            assert run.master.slots.state(1) is SlotState.WAITING
            await run.settled(2)
            second = run.fleet.running(1)[0]
            assert second.pid != first.pid
            history = run.master.history.records
            assert [(h["worker"], h["pid"], h["reason"]) for h in history] == [
                (1, first.pid, "crash")]
            assert run.master.history.by_slot == {1: 1}
    scenario(body)


def test_a_boot_error_before_any_worker_was_ready_ends_the_run():
    async def body() -> None:
        fleet = Fleet(auto_ready=False)
        async with running(fleet, workers=2) as run:
            await until(lambda: len(fleet.started) == 2)
            fleet.started[0].fail_to_boot("ImportError: cannot import name 'app'")
            with pytest.raises(BootError) as caught:
                await asyncio.wait_for(asyncio.shield(run.task), 5)
            assert caught.value.message == ('app "tests.apps.plain:app" failed to start: '
                                            "ImportError: cannot import name 'app'")
            assert fleet.running() == []
            assert run.master.state is AppState.STOPPED
    scenario(body)


def test_boot_failures_after_running_make_the_app_errored_and_the_rest_serve_on():
    async def body() -> None:
        fleet = Fleet()
        async with running(fleet, workers=2, max_boot_failures=2) as run:
            await run.settled(2)
            fleet.auto_ready = False
            fleet.on_launch = lambda fake: asyncio.get_running_loop().call_soon(
                fake.fail_to_boot, "RuntimeError: database is down")
            fleet.running(1)[0].exit(1)
            await until(lambda: run.master.state is AppState.ERRORED, what="errored")
            assert [kind for kind, _ in run.events] == ["ready", "errored"]
            assert run.events[1][1]["error"]["kind"] == "BootError"
            assert run.events[1][1]["error"]["message"] == (
                'app "tests.apps.plain:app" failed to start: RuntimeError: database is down')
            assert list(run.serving()) == [2] and run.in_rotation() == [fleet.running(2)[0].pid]
            started = len(fleet.started)
            fleet.running(2)[0].exit(1)  # the last one: the app ends, with the cause
            with pytest.raises(AppErrored) as caught:
                await asyncio.wait_for(asyncio.shield(run.task), 5)
            assert "last error: RuntimeError: database is down" in str(caught.value)
            assert len(fleet.started) == started  # errored: nothing respawned
    scenario(body)


def test_a_worker_that_cannot_be_started_is_tried_again_and_the_app_serves_on():
    async def body() -> None:
        async with running(workers=2) as run:
            await run.settled(2)
            run.fleet.failures.append(BlockingIOError(11, "Resource temporarily unavailable"))
            run.fleet.running(2)[0].exit(-9)
            await until(lambda: not run.fleet.failures, what="the failed launch")
            assert run.master.state is AppState.RUNNING
            assert run.master.slots.state(2) is SlotState.WAITING
            await run.settled(2)
    scenario(body)


def test_a_worker_told_to_stop_from_outside_is_drained_and_replaced():
    async def body() -> None:
        async with running(workers=2) as run:
            await run.settled(2)
            old = run.fleet.running(2)[0]
            old.leave()
            await until(lambda: old.stopped and not old.running, what="the drain")
            await run.settled(2)
            assert run.master.history.records[-1]["reason"] == "signal"
    scenario(body)


# ---------------------------------------------------------------------- reload


def test_a_reload_replaces_every_worker_new_one_first():
    async def body() -> None:
        async with running(workers=3) as run:
            await run.settled(3)
            old = {f.pid for f in run.fleet.running()}
            new = await run.master.start_reload()
            assert len(new) == 3 and not set(new) & old
            await run.settled(3)
            assert {f.pid for f in run.fleet.running()} == set(new)
            assert all(run.fleet.of(pid).stopped for pid in old)
            assert sorted(h["pid"] for h in run.master.history.records) == sorted(old)
    scenario(body)


def test_a_reload_whose_new_worker_fails_keeps_the_old_one():
    async def body() -> None:
        async with running(workers=2) as run:
            await run.settled(2)
            old = {f.pid for f in run.fleet.running()}
            run.fleet.auto_ready = False
            run.fleet.on_launch = lambda fake: asyncio.get_running_loop().call_soon(
                fake.fail_to_boot, "SyntaxError: invalid syntax")
            with pytest.raises(ReloadError) as caught:
                await run.master.start_reload()
            assert "failed to start: SyntaxError: invalid syntax" in caught.value.message
            await run.settled(2)
            assert {f.pid for f in run.fleet.running()} == old
            assert run.master.state is AppState.RUNNING
    scenario(body)


def test_a_replacement_not_ready_in_time_is_killed_and_the_old_one_serves_on():
    async def body() -> None:
        async with running(workers=1, ready_timeout=0.2) as run:
            await run.settled(1)
            old = run.fleet.running()[0]
            run.fleet.auto_ready = False
            with pytest.raises(ReloadError, match="was not ready after 0.2 s"):
                await run.master.start_reload()
            await run.settled(1)
            assert run.fleet.running() == [old]
            assert run.master.slots.state(1) is SlotState.HELD
    scenario(body)


@pytest.mark.parametrize("how", ["killed", "sigterm"])
def test_the_old_worker_dying_while_its_replacement_boots_leaves_one_worker_in_the_slot(how):
    """Issue 10, item 1: reload with a slow-starting replacement, and the old worker #1
    dies (or is told to stop) meanwhile. The replacement alone fills slot 1: no respawn,
    no second worker, ever; and scaling sees one worker per slot."""
    async def body() -> None:
        async with running(workers=3) as run:
            await run.settled(3)
            old = run.fleet.running(1)[0]
            run.fleet.auto_ready = False
            reload = run.master.start_reload()
            await until(lambda: len(run.fleet.running(1)) == 2, what="the replacement")
            replacement = run.fleet.running(1)[1]
            if how == "killed":
                old.exit(-9)
            else:
                old.leave()
            await until(lambda: run.reaped(old.pid), what="the old worker to go")
            assert run.master.slots.state(1) is SlotState.HELD
            assert run.master.slots.holder(1).pid == replacement.pid  # type: ignore[union-attr]
            await asyncio.sleep(0.3)  # past the first respawn backoff (0.1 s)
            assert run.fleet.running(1) == [replacement]
            run.fleet.auto_ready = True
            replacement.ready()
            pids = await asyncio.wait_for(reload, 5)
            await run.settled(3)
            assert pids[0] == replacement.pid
            assert run.fleet.running(1) == [replacement]
            run.master.scale(1)
            await run.settled(1)
            assert [f.pid for f in run.fleet.running()] == [replacement.pid]
    scenario(body)


def test_the_old_worker_dying_and_then_its_replacement_failing_refills_the_slot():
    async def body() -> None:
        async with running(workers=2) as run:
            await run.settled(2)
            old = run.fleet.running(1)[0]
            run.fleet.auto_ready = False
            reload = run.master.start_reload()
            await until(lambda: len(run.fleet.running(1)) == 2, what="the replacement")
            replacement = run.fleet.running(1)[1]
            old.exit(-9)
            await until(lambda: run.reaped(old.pid))
            replacement.fail_to_boot("SyntaxError: invalid syntax")
            with pytest.raises(ReloadError):
                await reload
            assert run.master.slots.state(1) is SlotState.WAITING
            run.fleet.auto_ready = True
            await run.settled(2)
    scenario(body)


def test_a_second_spawn_in_a_held_slot_is_refused():
    async def body() -> None:
        async with running(workers=2) as run:
            await run.settled(2)
            started = len(run.fleet.started)
            with pytest.raises(SlotTaken):
                run.master.slots.spawn(1)
            holder = run.master.slots.holder(1)
            assert holder is not None
            run.fleet.auto_ready = False
            run.master.slots.spawn_replacement(holder)
            with pytest.raises(SlotTaken):
                run.master.slots.spawn_replacement(holder)
            assert len(run.fleet.started) == started + 1
    scenario(body)


# ---------------------------------------------------------------------- recycling


def test_max_requests_recycles_a_worker_new_one_first():
    async def body() -> None:
        async with running(workers=2, max_requests=100) as run:
            await run.settled(2)
            old = run.fleet.running(2)[0]
            old.served(100)
            await until(lambda: not old.running, what="the recycling")
            await run.settled(2)
            assert old.stopped
            assert run.master.history.records[-1]["reason"] == "max-requests"
            assert run.master.history.records[-1]["pid"] == old.pid
    scenario(body)


def test_a_recycled_worker_dying_while_its_replacement_boots_leaves_one_worker():
    async def body() -> None:
        async with running(workers=2, max_requests=100) as run:
            await run.settled(2)
            old = run.fleet.running(1)[0]
            run.fleet.auto_ready = False
            old.served(100)
            await until(lambda: len(run.fleet.running(1)) == 2, what="the replacement")
            replacement = run.fleet.running(1)[1]
            old.exit(-9)
            await asyncio.sleep(0.3)
            assert run.fleet.running(1) == [replacement]
            replacement.ready()
            await run.settled(2)
            assert run.fleet.running(1) == [replacement]
    scenario(body)


# ---------------------------------------------------------------------- scaling


def test_scaling_up_takes_the_lowest_free_slots_and_down_drains_the_highest():
    async def body() -> None:
        async with running(workers=2) as run:
            await run.settled(2)
            run.master.scale(4)
            await run.settled(4)
            assert sorted(run.serving()) == [1, 2, 3, 4]
            gone = [run.fleet.running(i)[0] for i in (3, 4)]
            run.master.scale(2)
            await run.settled(2)
            assert sorted(run.serving()) == [1, 2]
            assert all(f.stopped for f in gone)
            assert [(kind, data) for kind, data in run.events if kind == "scaled"] == [
                ("scaled", {"workers": 4}), ("scaled", {"workers": 2})]
            assert run.master.config.workers == 2
    scenario(body)


def test_scaling_down_cancels_a_pending_respawn():
    async def body() -> None:
        async with running(workers=2) as run:
            await run.settled(2)
            run.fleet.running(2)[0].exit(-9)
            await until(lambda: run.master.slots.state(2) is SlotState.WAITING)
            run.master.scale(1)
            started = len(run.fleet.started)
            await asyncio.sleep(0.3)
            assert len(run.fleet.started) == started
            assert run.master.slots.ids() == [1]
    scenario(body)


def test_scaling_is_refused_while_a_worker_is_replaced():
    async def body() -> None:
        async with running(workers=2) as run:
            await run.settled(2)
            run.fleet.auto_ready = False
            reload = run.master.start_reload()
            await until(lambda: len(run.fleet.running()) == 3)
            with pytest.raises(PmxError, match="while workers are being replaced"):
                run.master.scale(3)
            reload.cancel()
    scenario(body)


# ---------------------------------------------------------------------- admin


def test_admin_probe_waiters_are_cleaned_up_while_a_worker_hangs():
    async def body() -> None:
        async with running(workers=1, health_timeout=0.05, health_interval=60) as run:
            await run.settled(1)
            worker = run.master.live[0]
            run.fleet.running()[0].hung = True
            admin = Admin(run.master)
            for _ in range(5):
                status, _kind, body = await admin.route("GET", "/workers/1/health")
                assert status == 503 and b'"probe": "timeout"' in body
                assert worker.probe_waiters == []
    scenario(body)


def test_admin_health_follows_the_rotation():
    async def body() -> None:
        async with running(workers=1) as run:
            await run.settled(1)
            admin = Admin(run.master)
            status, _kind, body = await admin.route("GET", "/health")
            assert status == 200 and b'"in_rotation": 1' in body
    scenario(body)


def test_a_reload_of_a_slot_being_recycled_says_so():
    async def body() -> None:
        async with running(workers=1, max_requests=100) as run:
            await run.settled(1)
            run.fleet.auto_ready = False
            run.fleet.running()[0].served(100)
            await until(lambda: len(run.fleet.started) == 2, what="the recycling")
            with pytest.raises(ReloadError) as caught:
                await run.master.start_reload()
            assert caught.value.message == "worker #1 is already being replaced."
    scenario(body)


def test_several_workers_due_are_recycled_together_up_to_half_the_slots():
    """Issue 10, item 9: one replacement at a time made workers serve far past their
    limit. Workers due together are replaced together, at most half the slots at once
    (each replacement boots an interpreter beside the workers serving)."""
    async def body() -> None:
        async with running(workers=4, max_requests=100) as run:
            await run.settled(4)
            run.fleet.auto_ready = False
            old = run.fleet.running()
            for fake in old:
                fake.served(100)
            await until(lambda: len(run.fleet.started) == 6, what="two replacements")
            await asyncio.sleep(0.3)  # three supervisor ticks: no third one
            assert len(run.fleet.started) == 6
            run.fleet.auto_ready = True
            for fake in run.fleet.started[4:]:
                fake.ready()
            await until(lambda: not any(f.running for f in old), what="all four recycled")
            await run.settled(4)
            assert sorted(h["worker"] for h in run.master.history.records) == [1, 2, 3, 4]
    scenario(body)


def test_a_worker_frozen_while_idle_leaves_the_rotation_within_the_health_timeout():
    """Issue 10, item 8: a worker frozen while idle (SIGSTOP) stayed in rotation for
    three failed probes, 5 s with the defaults. Its load slot shows it sooner: an idle
    loop stamps it ten times a second, so a stamp older than --health-timeout means the
    loop is not turning. Here no probe is even sent (--health-interval 60)."""
    async def body() -> None:
        async with running(workers=2, health_interval=60, health_timeout=0.5) as run:
            await run.settled(2)
            frozen = run.fleet.running(1)[0]
            frozen.hung = True
            await until(lambda: run.in_rotation() == [run.fleet.running(2)[0].pid], 2,
                        "the frozen worker to leave the rotation")
            assert run.master.live[0].health.state.value == "failing"
            frozen.hung = False  # SIGCONT: probes pass again, and it is back
            for worker in run.master.live:
                run.master.probe(worker)
            await asyncio.sleep(0.05)
            for worker in run.master.live:
                run.master.probe(worker)
            await run.settled(2)
    scenario(body)
