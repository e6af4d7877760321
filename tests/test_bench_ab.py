"""bench/ab.py's pure parts: the rotating order, the pair count and the summary rows."""

from __future__ import annotations

import math

import pytest

from bench.ab import main, order, summary, wins


def test_each_round_rotates_the_order_so_every_revision_runs_first_in_turn():
    rounds = [order(["a", "b", "c"], n) for n in range(4)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert [order(["a", "b"], n)[0] for n in range(4)] == ["a", "b", "a", "b"]


def test_wins_is_the_share_of_pairs_the_other_revision_wins():
    assert wins([1, 2], [3, 4], higher_is_better=True) == 1.0
    assert wins([1, 2], [3, 4], higher_is_better=False) == 0.0
    assert wins([1, 3], [2, 2], higher_is_better=True) == 0.5  # one pair each way
    assert wins([2], [2], higher_is_better=True) == 0.5  # a tie counts half
    assert math.isnan(wins([], [1], higher_is_better=True))


def measurement(rps: float, cpu: float) -> dict:
    latency = {"p90": 2000, "p99": 5000}
    return {"fast": {"rps": rps, "raw_latency_us": latency, "latency_us": latency},
            "server_cpu_us": cpu}


def test_the_summary_gives_medians_values_and_wins_per_figure():
    runs = {
        "old": [{"tail": {"2": {"pmx-auto": [measurement(rps, 100)]}}} for rps in (10, 30, 20)],
        "new": [{"tail": {"2": {"pmx-auto": [measurement(rps, 90)]}}} for rps in (40, 50, 60)],
    }
    rows = summary(runs)
    assert rows[0] == "| scenario | workers | server | figure | old | new (wins) |"
    by_figure = {row.split(" | ")[3]: row for row in rows[2:]}
    assert by_figure["fast req/s"] == (
        "| tail | 2 | pmx-auto | fast req/s | 20 [10 20 30] | 50 [40 50 60] (100%) |")
    assert by_figure["server CPU µs/request"].endswith("| 90 [90 90 90] (100%) |")  # lower
    assert by_figure["p99 ms, wrk"].endswith("| 5 [5 5 5] (50%) |")


@pytest.mark.parametrize("argv, quoted", [
    (["HEAD"], "['HEAD']"),
    (["HEAD", "HEAD"], "['HEAD', 'HEAD']"),
    (["HEAD~1", "HEAD", "--rounds", "0"], "got 0"),
])
def test_bad_arguments_are_refused_before_anything_runs(argv, quoted, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert quoted in capsys.readouterr().err
