import math

import pytest

from pmx.cli.table import (
    COLUMNS,
    EMPTY_MESSAGE,
    fit_columns,
    format_bytes,
    format_cpu,
    format_uptime,
    render_table,
    status_rows,
)

MANDATORY = ["app", "id", "pid", "state"]
ALL_IDS = ["app", "id", "pid", "state", "uptime", "restarts", "cpu", "mem", "conns", "reqs",
           "moved", "health"]
DROP_ORDER = ["moved", "reqs", "health", "restarts", "conns", "uptime", "cpu", "mem"]


def worker(wid, pid, **overrides):
    values = {
        "id": wid, "pid": pid, "state": "ready", "uptime": 3725.0, "restarts": 0,
        "cpu": 1.5, "memory": 54_945_792, "connections": 3, "requests": 1_534_982,
        "moved": 12, "health": "ok",
    }
    values.update(overrides)
    return values


def app(name, workers, state="running", **overrides):
    values = {
        "name": name, "app": f"{name}.main:app", "state": state, "bind": "127.0.0.1:8000",
        "balance": "round-robin", "workers_wanted": len(workers), "master_pid": 1000,
        "restarts": 0, "error": "", "workers": workers,
    }
    values.update(overrides)
    return values


def snapshot(*apps):
    return {"version": 1, "apps": list(apps)}


# Two apps, 4 + 2 workers: 98 cells wide with every column.
SNAPSHOT = snapshot(
    app("billing-api", [
        worker(1, 1048571),
        worker(2, 1048572, cpu=100.0, memory=327_155_712, restarts=2, uptime=59.9),
        worker(3, 1048573, state="starting", uptime=None, cpu=None, memory=None,
               connections=0, requests=0, health="unknown"),
        worker(4, 1048574, state="draining", cpu=12.3, memory=1_288_490_189,
               uptime=2.5 * 86400, health="failing"),
    ]),
    app("web", [worker(1, 2002, requests=87), worker(2, 2003, requests=90)]),
)
WORKER_COUNT = 6

# Lines 0 (header), 1, 3 and 5 of SNAPSHOT rendered with every column.
EXPECTED_WIDE_LINES = [
    "app          id      pid  state     uptime  restarts    cpu    mem  conns     reqs  moved"
    "  health",
    "billing-api   1  1048571  ready         1h         0   1.5%  52.4M      3  1534982     12"
    "  ok",
    "              3  1048573  starting       -         0      -      -      0        0     12"
    "  unknown",
    "web           1     2002  ready         1h         0   1.5%  52.4M      3       87     12"
    "  ok",
]


def header_ids(table):
    return table.splitlines()[0].split()


@pytest.mark.parametrize(("seconds", "expected"), [
    (None, "-"),
    (0, "0s"),
    (45, "45s"),
    (59.9, "59s"),
    (60, "1m"),
    (754, "12m"),
    (3599, "59m"),
    (3600, "1h"),
    (3 * 3600 + 59 * 60, "3h"),
    (86399, "23h"),
    (86400, "1d"),
    (86400 * 2.5, "2d"),
    (86400 * 400, "400d"),
    (-3.0, "0s"),
    (math.nan, "-"),
])
def test_format_uptime(seconds, expected):
    assert format_uptime(seconds) == expected


@pytest.mark.parametrize(("n", "expected"), [
    (None, "-"),
    (0, "0B"),
    (512, "512B"),
    (1023, "1023B"),
    (1024, "1.0K"),
    (1536, "1.5K"),
    (54_945_792, "52.4M"),
    (int(99.94 * 1024**2), "99.9M"),
    (int(99.96 * 1024**2), "100M"),  # would print as 100.0M with one decimal
    (100 * 1024**2, "100M"),
    (327_155_712, "312M"),
    (int(1023.96 * 1024), "1.0M"),  # would print as 1024K
    (1_288_490_189, "1.2G"),
    (1024**4, "1.0T"),
])
def test_format_bytes(n, expected):
    assert format_bytes(n) == expected


@pytest.mark.parametrize(("percent", "expected"), [
    (None, "-"),
    (0.0, "0.0%"),
    (1.5, "1.5%"),
    (12.34, "12.3%"),
    (99.94, "99.9%"),
    (99.96, "100%"),
    (100.0, "100%"),
    (250.4, "250%"),
])
def test_format_cpu(percent, expected):
    assert format_cpu(percent) == expected


def test_columns_order_headers_and_priorities():
    assert [cid for cid, _, _ in COLUMNS] == ALL_IDS
    assert all(header.isascii() for _, header, _ in COLUMNS)
    assert [header for _, header, _ in COLUMNS] == ALL_IDS
    priority = {cid: prio for cid, _, prio in COLUMNS}
    assert {priority[cid] for cid in MANDATORY} == {0}
    droppable = [cid for cid in ALL_IDS if priority[cid] > 0]
    assert sorted(droppable, key=priority.__getitem__, reverse=True) == DROP_ORDER


def test_status_rows_one_per_worker_with_app_name_on_first_row_only():
    rows = status_rows(SNAPSHOT)
    assert len(rows) == WORKER_COUNT
    assert all(list(row) == ALL_IDS for row in rows)
    assert [row["app"] for row in rows] == ["billing-api", "", "", "", "web", ""]
    assert [row["pid"] for row in rows] == [
        "1048571", "1048572", "1048573", "1048574", "2002", "2003"]
    assert rows[1] == {
        "app": "", "id": "2", "pid": "1048572", "state": "ready", "uptime": "59s",
        "restarts": "2", "cpu": "100%", "mem": "312M", "conns": "3", "reqs": "1534982",
        "moved": "12", "health": "ok",
    }
    assert rows[2]["uptime"] == rows[2]["cpu"] == rows[2]["mem"] == "-"


def test_errored_app_without_workers_gets_one_row():
    snap = snapshot(
        app("api", [worker(1, 4567)]),
        app("broken", [], state="errored", error="ImportError: no module named 'x'"),
    )
    rows = status_rows(snap)
    assert len(rows) == 2
    assert rows[1] == {cid: "-" for cid in ALL_IDS} | {"app": "broken", "state": "errored"}
    last = render_table(snap, 120).splitlines()[-1]
    assert last.split() == ["broken", "-", "-", "errored", "-", "-", "-", "-", "-", "-", "-",
                            "-"]
    assert last.startswith("broken")


def test_render_wide_shows_all_columns():
    lines = render_table(SNAPSHOT, 120).splitlines()
    assert header_ids("\n".join(lines)) == ALL_IDS
    assert [lines[i] for i in (0, 1, 3, 5)] == EXPECTED_WIDE_LINES
    assert all(len(line) <= 120 for line in lines)


def test_numbers_right_aligned_text_left_aligned():
    lines = render_table(SNAPSHOT, 120).splitlines()
    header = lines[0]
    for column in ("pid", "reqs", "mem"):
        end = header.index(column) + len(column)
        assert all(line[end - 1] != " " for line in lines[1:]), column
    start = header.index("state")
    assert [line[start:].split()[0] for line in lines[1:]] == [
        "ready", "ready", "starting", "draining", "ready", "ready"]


def test_render_80_drops_reqs_before_mem():
    table = render_table(SNAPSHOT, 80)
    lines = table.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].startswith("app")
    shown = header_ids(table)
    assert "reqs" not in shown
    assert "mem" in shown
    assert shown == ["app", "id", "pid", "state", "uptime", "restarts", "cpu", "mem", "conns"]


def test_render_40_shows_only_mandatory_columns():
    table = render_table(SNAPSHOT, 40)
    assert header_ids(table) == MANDATORY
    assert all(len(line) <= 40 for line in table.splitlines())


@pytest.mark.parametrize("width", [200, 120, 98, 97, 91, 90, 80, 60, 50, 40, 20, 1])
def test_never_wraps(width):
    lines = render_table(SNAPSHOT, width).splitlines()
    assert len(lines) == 1 + WORKER_COUNT
    assert all(line.strip() for line in lines)


def test_full_width_fits_exactly():
    rows = status_rows(SNAPSHOT)
    assert fit_columns(rows, 98) == ALL_IDS
    assert fit_columns(rows, 97) == [cid for cid in ALL_IDS if cid != "moved"]


def test_columns_dropped_in_priority_order_at_every_width():
    rows = status_rows(SNAPSHOT)
    seen = []
    for width in range(120, 0, -1):
        shown = fit_columns(rows, width)
        assert shown == [cid for cid in ALL_IDS if cid in shown]  # table order kept
        dropped = [cid for cid in ALL_IDS if cid not in shown]
        assert sorted(dropped, key=DROP_ORDER.index) == DROP_ORDER[:len(dropped)]
        seen.append(len(dropped))
    assert seen == sorted(seen)
    assert seen[0] == 0 and seen[-1] == len(DROP_ORDER)


def test_too_narrow_keeps_mandatory_columns_untruncated():
    table = render_table(SNAPSHOT, 10)
    assert header_ids(table) == MANDATORY
    assert "billing-api" in table and "1048574" in table and "draining" in table
    assert any(len(line) > 10 for line in table.splitlines())


def test_lines_have_no_trailing_spaces():
    for width in (120, 80, 40):
        assert all(line == line.rstrip() for line in render_table(SNAPSHOT, width).splitlines())


@pytest.mark.parametrize("snap", [snapshot(), {"version": 1}])
def test_no_apps_message(snap):
    assert render_table(snap, 80) == "No apps running. Start one with: pmx start module:app"
    assert EMPTY_MESSAGE == render_table(snap, 80)
    assert status_rows(snap) == []


def test_monit_shows_the_status_rows_plus_requests_per_second():
    from pmx.cli.monit import build

    snapshot = {"apps": [app("web", [worker(1, 11), worker(2, 12, cpu=None)]),
                         app("down", [], state="errored")]}
    table = build(snapshot, {("web", 11): 12.34})
    cells = [[column._cells[i] for column in table.columns] for i in range(table.row_count)]
    shown = ["app", "id", "pid", "state", "uptime", "cpu", "mem", "conns"]
    assert cells == [[row[c] for c in shown] + [rate]
                     for row, rate in zip(status_rows(snapshot), ["12.3", "-", "-"], strict=True)]
