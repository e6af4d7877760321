"""The health state machine, table-driven: probe results in, states out."""

from __future__ import annotations

import pytest

from pmx.master.health import Health, HealthCheck

P, F = True, False


@pytest.mark.parametrize(
    ("results", "expected", "in_rotation"),
    [
        ([], Health.PENDING, False),
        ([P], Health.OK, True),  # a new worker joins on its first pass
        ([F], Health.PENDING, False),
        ([F, F, F], Health.FAILING, False),  # never passed: not in rotation
        ([P, F, F], Health.OK, True),  # fall=3: two failures are tolerated
        ([P, F, F, F], Health.FAILING, False),
        ([P, F, F, F, P], Health.FAILING, False),  # rise=2: one pass is not enough
        ([P, F, F, F, P, P], Health.OK, True),
        ([P, F, F, F, P, F, P, P], Health.OK, True),  # passes must be in a row
        ([P, F, F, P, F, F], Health.OK, True),  # failures must be in a row
    ],
)
def test_transitions(results, expected, in_rotation):
    check = HealthCheck(fall=3, rise=2)
    for result in results:
        check.record(result)
    assert check.state is expected
    assert check.in_rotation is in_rotation


def test_due_for_replacement_after_failing_long_enough():
    check = HealthCheck(fall=2, rise=2, replace_after=4)
    states = [check.record(False) for _ in range(4)]
    assert states == [Health.PENDING, Health.FAILING, Health.FAILING, Health.FAILING]
    assert check.due_for_replacement
    check.record(True)
    assert not check.due_for_replacement


def test_health_values_are_what_status_shows():
    assert [h.value for h in Health] == ["unknown", "ok", "failing"]


def test_a_stall_fails_at_once_and_passes_bring_it_back():
    check = HealthCheck(fall=3, rise=2, replace_after=6)
    check.record(True)
    assert check.stall() is Health.FAILING and check.failures == 3
    assert check.record(True) is Health.FAILING
    assert check.record(True) is Health.OK
    check.stall()
    assert [check.record(False) for _ in range(3)][-1] is Health.FAILING
    assert check.due_for_replacement  # 3 + 3 failures in a row
