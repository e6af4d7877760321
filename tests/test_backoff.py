import pytest

from pmx.backoff import Backoff


def delays(backoff, uptimes):
    return [backoff.on_exit(uptime) for uptime in uptimes]


def test_defaults():
    backoff = Backoff()
    assert (backoff.initial, backoff.factor, backoff.cap, backoff.reset_after) == (
        0.1,
        2.0,
        15.0,
        30.0,
    )
    assert backoff.failures == 0


def test_first_delay():
    assert Backoff().on_exit(0.0) == pytest.approx(0.1)


def test_doubles_up_to_cap():
    expect = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 15.0, 15.0, 15.0]
    assert delays(Backoff(), [0.0] * len(expect)) == pytest.approx(expect)


def test_counts_failures():
    backoff = Backoff()
    delays(backoff, [1.0] * 3)
    assert backoff.failures == 3


@pytest.mark.parametrize("uptime", [0.0, 1.0, 29.0, 29.999])
def test_short_uptime_keeps_growing(uptime):
    backoff = Backoff()
    assert delays(backoff, [uptime] * 4) == pytest.approx([0.1, 0.2, 0.4, 0.8])


@pytest.mark.parametrize("uptime", [30.0, 30.001, 3600.0])
def test_long_uptime_resets(uptime):
    backoff = Backoff()
    assert delays(backoff, [0.0] * 5) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert backoff.on_exit(uptime) == pytest.approx(0.1)
    # ...and the schedule starts over from there.
    assert delays(backoff, [0.0] * 3) == pytest.approx([0.2, 0.4, 0.8])


def test_reset_from_cap():
    backoff = Backoff()
    delays(backoff, [0.0] * 20)
    assert backoff.on_exit(0.0) == pytest.approx(15.0)
    assert backoff.on_exit(31.0) == pytest.approx(0.1)


def test_healthy_worker_always_gets_initial():
    assert delays(Backoff(), [60.0] * 5) == pytest.approx([0.1] * 5)


@pytest.mark.parametrize(
    ("kwargs", "uptimes", "expect"),
    [
        ({"initial": 1.0}, [0, 0, 0, 0, 0], [1.0, 2.0, 4.0, 8.0, 15.0]),
        ({"cap": 0.5}, [0, 0, 0, 0, 0], [0.1, 0.2, 0.4, 0.5, 0.5]),
        ({"initial": 2.0, "cap": 2.0}, [0, 0, 0], [2.0, 2.0, 2.0]),
        ({"factor": 3.0}, [0, 0, 0, 0], [0.1, 0.3, 0.9, 2.7]),
        ({"factor": 1.0}, [0, 0, 0], [0.1, 0.1, 0.1]),
        ({"reset_after": 5.0}, [0, 0, 4.9, 5.0, 0], [0.1, 0.2, 0.4, 0.1, 0.2]),
        ({"reset_after": 60.0}, [0, 30, 59, 60], [0.1, 0.2, 0.4, 0.1]),
        (
            {"initial": 0.5, "cap": 3.0, "reset_after": 10.0},
            [0, 0, 0, 0, 10, 0],
            [0.5, 1.0, 2.0, 3.0, 0.5, 1.0],
        ),
    ],
)
def test_custom_settings(kwargs, uptimes, expect):
    assert delays(Backoff(**kwargs), uptimes) == pytest.approx(expect)


def test_schedules_are_independent():
    a, b = Backoff(), Backoff()
    delays(a, [0.0] * 4)
    assert b.on_exit(0.0) == pytest.approx(0.1)
    assert a.on_exit(0.0) == pytest.approx(1.6)


def test_long_crash_loop_stays_at_cap():
    backoff = Backoff()
    result = delays(backoff, [0.0] * 2000)
    assert result[-1] == 15.0


def test_failed_replacements_are_retried_ever_later():
    from pmx.master.supervise import retry_backoff

    retry = retry_backoff()
    assert [retry.on_exit(0.0) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
