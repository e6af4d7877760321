"""The app's states (pmx.master.states) and the slot table (pmx.master.slots), with
plain values: every move allowed or refused as its table says."""

from __future__ import annotations

import asyncio
import logging
import types

import pytest

from pmx.master.slots import Slots, SlotState, SlotTaken
from pmx.master.states import (
    DAEMON_FLOW,
    MASTER_FLOW,
    AppState,
    IllegalTransition,
    Lifecycle,
)

S, R, E, G, D = (AppState.STARTING, AppState.RUNNING, AppState.ERRORED, AppState.STOPPING,
                 AppState.STOPPED)


@pytest.mark.parametrize(
    ("flow", "path", "refused"),
    [
        (MASTER_FLOW, [R, E, G, D], None),
        (MASTER_FLOW, [G, D], None),
        (MASTER_FLOW, [R, G, D], None),
        (MASTER_FLOW, [], E),  # errored only after running
        (MASTER_FLOW, [R], R),
        (MASTER_FLOW, [R, G, D], S),  # a master does not start again
        (MASTER_FLOW, [R, G], R),
        (DAEMON_FLOW, [R, G, D, S, E, S], None),  # the daemon restarts apps
        (DAEMON_FLOW, [R, G, G, D, D], None),  # a stop asked for twice
        (DAEMON_FLOW, [R], S),
        (DAEMON_FLOW, [G], R),
    ],
)
def test_lifecycle_moves(flow, path, refused, caplog):
    life = Lifecycle("app web", flow, logging.getLogger("pmx.test"))
    caplog.set_level(logging.DEBUG, "pmx.test")
    before = life.state
    for state in path:
        life.to(state, "why")
        assert caplog.messages[-1] == f"app web: {before.value} -> {state.value} (why)"
        before = state
    if refused is not None:
        with pytest.raises(IllegalTransition) as caught:
            life.to(refused)
        assert str(caught.value) == (f"app web: {before.value} -> {refused.value} "
                                     "is not allowed")
    assert life.state is before


def test_every_state_has_a_row_in_each_flow():
    assert set(MASTER_FLOW) == set(DAEMON_FLOW) == set(AppState)


def fake_worker(slot_id: int, pid: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(id=slot_id, pid=pid)


def slots_with_pids() -> tuple[Slots, list]:
    started: list = []

    def start(slot_id: int, replacement: bool) -> types.SimpleNamespace:
        worker = fake_worker(slot_id, 100 + len(started))
        started.append((worker, replacement))
        return worker

    return Slots(start), started  # type: ignore[arg-type]


def test_one_worker_per_slot_and_one_replacement():
    slots, started = slots_with_pids()
    first = slots.spawn(1)
    assert slots.state(1) is SlotState.HELD and slots.holder(1) is first
    with pytest.raises(SlotTaken, match="worker #1: the slot is held"):
        slots.spawn(1)
    new = slots.spawn_replacement(first)
    assert slots.state(1) is SlotState.REPLACING and slots.replacing()
    assert slots.role(first) == "holder" and slots.role(new) == "incoming"
    with pytest.raises(SlotTaken):
        slots.spawn_replacement(first)
    with pytest.raises(SlotTaken):
        slots.spawn(1)
    assert [r for _, r in started] == [False, True]
    assert slots.take_over(new) is first
    assert slots.holder(1) is new and slots.state(1) is SlotState.HELD
    assert slots.leave(first) is None  # it left when it was replaced


def test_the_old_worker_leaving_hands_the_slot_to_its_replacement():
    slots, _ = slots_with_pids()
    old = slots.spawn(1)
    new = slots.spawn_replacement(old)
    assert slots.leave(old) is SlotState.HELD
    assert slots.holder(1) is new
    assert slots.take_over(new) is None  # nothing left to drain
    assert slots.leave(new) is SlotState.EMPTY


def test_a_failed_replacement_leaves_the_old_worker_holding():
    slots, _ = slots_with_pids()
    old = slots.spawn(1)
    new = slots.spawn_replacement(old)
    assert slots.leave(new) is SlotState.HELD
    assert slots.holder(1) is old


def test_a_launch_that_fails_leaves_the_slot_empty():
    def start(slot_id: int, replacement: bool) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    slots = Slots(start)  # type: ignore[arg-type]
    with pytest.raises(OSError):
        slots.spawn(2)
    assert slots.state(2) is SlotState.EMPTY


def test_a_scheduled_respawn_and_its_cancelling():
    async def body() -> None:
        slots, _ = slots_with_pids()
        due: list[int] = []
        worker = slots.spawn(1)
        slots.leave(worker)
        slots.schedule(1, 0.01, due.append)
        assert slots.waiting() == [1]
        with pytest.raises(SlotTaken, match="waiting -> waiting"):
            slots.schedule(1, 0.01, due.append)
        await asyncio.sleep(0.05)
        assert due == [1]
        slots.spawn(1)
        assert slots.state(1) is SlotState.HELD
        slots.spawn(2)
        slots.leave(slots.holder(2))  # type: ignore[arg-type]
        slots.schedule(2, 0.01, due.append)
        slots.cancel_all()
        await asyncio.sleep(0.05)
        assert due == [1] and slots.state(2) is SlotState.EMPTY
        assert slots.remove(2) is None and slots.ids() == [1]

    asyncio.run(body())
