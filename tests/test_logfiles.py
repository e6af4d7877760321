"""Log files: the rotating writer, tail, and the followers behind ``pmx logs --follow``.

Everything runs on real files in ``tmp_path``. Timestamps come from an injected clock
under a fixed ``TZ``. The followers are driven without threads or real sleeps: their
``sleep`` is a :class:`Script` that performs the next scripted file change each time the
follower waits, so each ``next()`` sees exactly the writes the test made.
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pmx import logfiles
from pmx.logfiles import MAX_LINE, RotatingLog, follow, follow_many, tail_lines

T0 = 1_700_000_000.5  # 2023-11-14 22:13:20.500 UTC
STAMP0 = b"2023-11-14 22:13:20.500 "


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Script:
    """A fake ``sleep``: each call runs the next action; running out fails the test."""

    def __init__(self, *actions: Callable[[], object]) -> None:
        self.actions = list(actions)
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if not self.actions:
            raise AssertionError("the follower waited more often than the test scripted")
        self.actions.pop(0)()


def append(path: Path, data: bytes) -> Callable[[], None]:
    def action() -> None:
        with open(path, "ab") as fh:
            fh.write(data)

    return action


def nothing() -> None:
    pass


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# -- RotatingLog: lines and timestamps ---------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "now", "stamp"),
    [
        ("UTC", T0, b"2023-11-14 22:13:20.500 "),
        ("EST+05", T0, b"2023-11-14 17:13:20.500 "),  # local time, not UTC
        ("UTC", 1_700_000_000.0019, b"2023-11-14 22:13:20.002 "),
        ("UTC", 1_700_000_000.9996, b"2023-11-14 22:13:21.000 "),  # never ".1000"
    ],
)
def test_each_line_is_prefixed_with_the_local_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tz: str, now: float, stamp: bytes
) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        path = tmp_path / "app.out.log"
        log = RotatingLog(str(path), max_bytes=10_000, backups=2, clock=Clock(now))
        log.write_lines(b"[w1] hello\n[w2] world\n")
        assert path.read_bytes() == stamp + b"[w1] hello\n" + stamp + b"[w2] world\n"
        log.close()
    finally:
        monkeypatch.undo()
        time.tzset()


def test_parent_directories_are_created_and_existing_content_kept(
    tmp_path: Path, utc: None
) -> None:
    path = tmp_path / "home" / "logs" / "app.out.log"
    with RotatingLog(str(path), 10_000, 2, clock=Clock()) as log:
        log.write_lines(b"one\n")
    with RotatingLog(str(path), 10_000, 2, clock=Clock()) as log:
        log.write_lines(b"two\n")
    assert path.read_bytes() == STAMP0 + b"one\n" + STAMP0 + b"two\n"


def test_a_partial_line_waits_for_its_newline_and_is_stamped_when_complete(
    tmp_path: Path, utc: None
) -> None:
    path = tmp_path / "app.out.log"
    clock = Clock()
    log = RotatingLog(str(path), 10_000, 2, clock=clock)
    log.write_lines(b"[w1] hel")
    assert path.read_bytes() == b""
    clock.now += 1
    log.write_lines(b"lo\n[w1] wor")
    assert path.read_bytes() == b"2023-11-14 22:13:21.500 [w1] hello\n"
    clock.now += 1
    log.write_lines(b"ld\n\n")
    assert path.read_bytes() == (
        b"2023-11-14 22:13:21.500 [w1] hello\n"
        b"2023-11-14 22:13:22.500 [w1] world\n"
        b"2023-11-14 22:13:22.500 \n"
    )
    log.close()


def test_close_writes_the_pending_partial_line(tmp_path: Path, utc: None) -> None:
    path = tmp_path / "app.out.log"
    log = RotatingLog(str(path), 10_000, 2, clock=Clock())
    log.write_lines(b"done\nno newline")
    log.close()
    assert path.read_bytes() == STAMP0 + b"done\n" + STAMP0 + b"no newline\n"
    log.close()  # idempotent
    assert log.closed
    with pytest.raises(ValueError):
        log.write_lines(b"late\n")


def test_a_partial_line_over_64_kib_is_written_as_a_line_of_its_own(
    tmp_path: Path, utc: None
) -> None:
    path = tmp_path / "app.out.log"
    log = RotatingLog(str(path), 10_000_000, 2, clock=Clock())
    log.write_lines(b"x" * MAX_LINE)
    assert path.read_bytes() == b""  # exactly 64 KiB: may still get its newline
    log.write_lines(b"yz")
    assert path.read_bytes() == STAMP0 + b"x" * MAX_LINE + b"\n"
    log.write_lines(b"\n")
    assert path.read_bytes().splitlines() == [STAMP0 + b"x" * MAX_LINE, STAMP0 + b"yz"]
    log.close()


def test_long_lines_are_cut_the_same_way_however_the_pipe_reads_split_them(
    tmp_path: Path, utc: None
) -> None:
    data = b"a" * (MAX_LINE * 2 + 100) + b"\nshort\n"
    whole, pieces = tmp_path / "whole.log", tmp_path / "pieces.log"
    with RotatingLog(str(whole), 10_000_000, 2, clock=Clock()) as log:
        log.write_lines(data)
    with RotatingLog(str(pieces), 10_000_000, 2, clock=Clock()) as log:
        for i in range(0, len(data), 5000):
            log.write_lines(data[i : i + 5000])
    assert whole.read_bytes() == pieces.read_bytes()
    assert [len(line) for line in whole.read_bytes().splitlines()] == [
        len(STAMP0) + MAX_LINE,
        len(STAMP0) + MAX_LINE,
        len(STAMP0) + 100,
        len(STAMP0) + 5,
    ]


# -- RotatingLog: rotation ----------------------------------------------------------------

RECORD = len(STAMP0) + len(b"line1\n")  # every "lineN\n" record is 30 bytes


def test_rotation_keeps_two_backups_and_drops_the_oldest(tmp_path: Path, utc: None) -> None:
    path = tmp_path / "app.out.log"
    log = RotatingLog(str(path), max_bytes=2 * RECORD, backups=2, clock=Clock())
    for i in range(1, 4):
        log.write_lines(b"line%d\n" % i)
    assert files(tmp_path) == {
        "app.out.log": STAMP0 + b"line3\n",
        "app.out.log.1": STAMP0 + b"line1\n" + STAMP0 + b"line2\n",
    }
    for i in range(4, 8):
        log.write_lines(b"line%d\n" % i)
    assert files(tmp_path) == {
        "app.out.log": STAMP0 + b"line7\n",
        "app.out.log.1": STAMP0 + b"line5\n" + STAMP0 + b"line6\n",
        "app.out.log.2": STAMP0 + b"line3\n" + STAMP0 + b"line4\n",
    }
    log.close()


def test_rotation_happens_between_the_lines_of_one_chunk(tmp_path: Path, utc: None) -> None:
    path = tmp_path / "app.err.log"
    with RotatingLog(str(path), max_bytes=2 * RECORD, backups=2, clock=Clock()) as log:
        log.write_lines(b"line1\nline2\nline3\nline4\nline5\n")
    assert files(tmp_path) == {
        "app.err.log": STAMP0 + b"line5\n",
        "app.err.log.1": STAMP0 + b"line3\n" + STAMP0 + b"line4\n",
        "app.err.log.2": STAMP0 + b"line1\n" + STAMP0 + b"line2\n",
    }


def test_backups_zero_keeps_no_old_file(tmp_path: Path, utc: None) -> None:
    path = tmp_path / "app.out.log"
    with RotatingLog(str(path), max_bytes=2 * RECORD, backups=0, clock=Clock()) as log:
        log.write_lines(b"line1\nline2\n")
        log.write_lines(b"line3\n")
        assert files(tmp_path) == {"app.out.log": STAMP0 + b"line3\n"}
        log.write_lines(b"line4\nline5\n")
    assert files(tmp_path) == {"app.out.log": STAMP0 + b"line5\n"}


def test_existing_content_counts_towards_max_bytes(tmp_path: Path, utc: None) -> None:
    path = tmp_path / "app.out.log"
    path.write_bytes(b"x" * (RECORD + 1))
    with RotatingLog(str(path), max_bytes=2 * RECORD, backups=1, clock=Clock()) as log:
        log.write_lines(b"line1\n")
    assert files(tmp_path) == {
        "app.out.log": STAMP0 + b"line1\n",
        "app.out.log.1": b"x" * (RECORD + 1),
    }


def test_a_line_bigger_than_max_bytes_goes_whole_into_an_empty_file(
    tmp_path: Path, utc: None
) -> None:
    path = tmp_path / "app.out.log"
    with RotatingLog(str(path), max_bytes=10, backups=1, clock=Clock()) as log:
        log.write_lines(b"a long line\n")
        assert files(tmp_path) == {"app.out.log": STAMP0 + b"a long line\n"}
        log.write_lines(b"next\n")
    assert files(tmp_path) == {
        "app.out.log": STAMP0 + b"next\n",
        "app.out.log.1": STAMP0 + b"a long line\n",
    }


def test_rotation_deletes_numbered_files_beyond_backups_only(tmp_path: Path, utc: None) -> None:
    for name in ("app.out.log.3", "app.out.log.9", "app.out.log.old", "app.out.log.2.gz"):
        (tmp_path / name).write_bytes(b"stale")
    path = tmp_path / "app.out.log"
    with RotatingLog(str(path), max_bytes=RECORD, backups=2, clock=Clock()) as log:
        log.write_lines(b"line1\nline2\n")
    assert files(tmp_path) == {
        "app.out.log": STAMP0 + b"line2\n",
        "app.out.log.1": STAMP0 + b"line1\n",
        "app.out.log.2.gz": b"stale",
        "app.out.log.old": b"stale",
    }


def test_a_deleted_log_file_is_recreated(tmp_path: Path, utc: None) -> None:
    path = tmp_path / "app.out.log"
    with RotatingLog(str(path), 10_000, 2, clock=Clock()) as log:
        log.write_lines(b"before\n")
        path.unlink()
        log.write_lines(b"after\n")
        assert path.read_bytes() == STAMP0 + b"after\n"


def test_invalid_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        RotatingLog(str(tmp_path / "a.log"), 0, 2)
    with pytest.raises(ValueError, match="backups"):
        RotatingLog(str(tmp_path / "a.log"), 100, -1)


# -- tail_lines ---------------------------------------------------------------------------


def numbered(count: int) -> bytes:
    return b"".join(b"line %06d of the log\n" % i for i in range(count))


def test_tail_of_a_file_bigger_than_the_block_size(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_bytes(numbered(20_000))
    assert path.stat().st_size > 4 * logfiles.TAIL_BLOCK
    assert tail_lines(str(path), 3) == [
        "line 019997 of the log",
        "line 019998 of the log",
        "line 019999 of the log",
    ]
    assert tail_lines(str(path), 5000) == [
        f"line {i:06d} of the log" for i in range(15_000, 20_000)
    ]
    assert len(tail_lines(str(path), 1_000_000)) == 20_000


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 9, 40])
@pytest.mark.parametrize("trailing_newline", [True, False])
def test_tail_with_lines_across_block_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, trailing_newline: bool
) -> None:
    monkeypatch.setattr(logfiles, "TAIL_BLOCK", 7)
    lines = ["alpha", "", "beta gamma delta", "é ü", "x", "yy", "a much longer line here", "z"]
    data = "\n".join(lines) + ("\n" if trailing_newline else "")
    path = tmp_path / "small.log"
    path.write_text(data, encoding="utf-8")
    assert tail_lines(str(path), n) == lines[-n:]


def test_tail_reads_only_the_end_of_a_huge_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.log"
    with open(path, "wb") as fh:
        fh.truncate(100 * 1024 * 1024)  # sparse: cheap to create
        fh.seek(0, os.SEEK_END)
        fh.write(numbered(10))
    read: list[int] = []

    class Spy:
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def __getattr__(self, name: str) -> Any:
            return getattr(self.fh, name)

        def __enter__(self) -> Spy:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def read(self, size: int = -1) -> bytes:
            data: bytes = self.fh.read(size)
            read.append(len(data))
            return data

    def spy_open(*args: Any, **kwargs: Any) -> Spy:
        return Spy(builtins.open(*args, **kwargs))

    monkeypatch.setattr(logfiles, "open", spy_open, raising=False)
    assert tail_lines(str(path), 2) == ["line 000008 of the log", "line 000009 of the log"]
    assert 0 < sum(read) <= logfiles.TAIL_BLOCK


def test_tail_of_a_missing_or_empty_file(tmp_path: Path) -> None:
    assert tail_lines(str(tmp_path / "nope.log"), 10) == []
    (tmp_path / "empty.log").write_bytes(b"")
    assert tail_lines(str(tmp_path / "empty.log"), 10) == []
    (tmp_path / "one.log").write_bytes(b"only\n")
    assert tail_lines(str(tmp_path / "one.log"), 0) == []
    assert tail_lines(str(tmp_path / "one.log"), 10) == ["only"]


# -- follow -------------------------------------------------------------------------------


def test_follow_yields_lines_written_after_it_started(tmp_path: Path) -> None:
    path = tmp_path / "app.out.log"
    path.write_bytes(b"old line\n")
    sleep = Script(append(path, b"new line\n"), append(path, b"two\nthree\n"))
    lines = follow(str(path), poll=0.25, sleep=sleep)
    assert next(lines) == "new line"
    assert next(lines) == "two"
    assert next(lines) == "three"
    assert sleep.calls == [0.25, 0.25]


def test_follow_starts_at_the_end_when_called_not_when_first_iterated(tmp_path: Path) -> None:
    path = tmp_path / "app.out.log"
    path.write_bytes(b"old\n")
    lines = follow(str(path), sleep=Script())
    append(path, b"written before next()\n")()
    assert next(lines) == "written before next()"


def test_follow_yields_only_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "app.out.log"
    path.write_bytes(b"old\nhalf a li")  # started mid-line: the rest of it is skipped
    sleep = Script(
        append(path, b"ne\n[w1] hel"), append(path, b"lo "), append(path, b"world\nnext")
    )
    lines = follow(str(path), sleep=sleep)
    assert next(lines) == "[w1] hello world"
    assert len(sleep.calls) == 3


def test_follow_across_rotations(tmp_path: Path, utc: None) -> None:
    path = tmp_path / "app.out.log"
    log = RotatingLog(str(path), max_bytes=2 * RECORD, backups=1, clock=Clock())
    log.write_lines(b"line0\n")
    sleep = Script(
        lambda: log.write_lines(b"line1\n"),
        # line2 ends the old file, line3 starts a new one: both arrive in one wait
        lambda: log.write_lines(b"line2\nline3\n"),
        # two rotations in one wait: the middle file (line4, line5) is never seen
        lambda: log.write_lines(b"line4\nline5\nline6\n"),
    )
    lines = follow(str(path), sleep=sleep)
    got = [next(lines) for _ in range(4)]
    assert got == [STAMP0.decode() + f"line{i}" for i in (1, 2, 3, 6)]
    assert (tmp_path / "app.out.log.1").read_bytes() == STAMP0 + b"line4\n" + STAMP0 + b"line5\n"
    log.close()


def test_follow_across_rotation_without_backups(tmp_path: Path, utc: None) -> None:
    path = tmp_path / "app.out.log"
    log = RotatingLog(str(path), max_bytes=2 * RECORD, backups=0, clock=Clock())
    log.write_lines(b"line0\n")
    sleep = Script(lambda: log.write_lines(b"line1\nline2\nline3\n"))
    lines = follow(str(path), sleep=sleep)
    assert [next(lines) for _ in range(3)] == [STAMP0.decode() + f"line{i}" for i in (1, 2, 3)]
    log.close()


def test_follow_finishes_the_old_file_after_a_rename(tmp_path: Path) -> None:
    path = tmp_path / "app.out.log"
    path.write_bytes(b"")

    def rotate() -> None:
        append(path, b"last old\nunterminated")()
        path.rename(tmp_path / "app.out.log.1")

    sleep = Script(
        rotate,
        nothing,  # renamed away, no new file yet: keep waiting
        append(path, b"first new\n"),
    )
    lines = follow(str(path), sleep=sleep)
    assert next(lines) == "last old"
    assert next(lines) == "unterminated"  # the old file is finished: its tail is a line
    assert next(lines) == "first new"
    assert len(sleep.calls) == 3


def test_follow_drains_lines_written_to_the_old_file_just_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "app.out.log"
    path.write_bytes(b"")
    real_stat = os.stat
    raced: list[bool] = []

    def stat(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        # The writer's last line and the rename land between the follower's read to
        # the end of the file and its check for a new file.
        if os.fspath(target) == str(path) and not raced:
            raced.append(True)
            append(path, b"late old line\n")()
            path.rename(tmp_path / "app.out.log.1")
            path.write_bytes(b"new line\n")
        return real_stat(target, *args, **kwargs)

    lines = follow(str(path), sleep=Script())
    monkeypatch.setattr(os, "stat", stat)
    assert next(lines) == "late old line"
    assert next(lines) == "new line"
    assert raced


def test_follow_after_truncation_reads_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "app.out.log"
    path.write_bytes(b"a fairly long first line\n")

    def truncate_and_write() -> None:
        path.write_bytes(b"short\n")

    lines = follow(str(path), sleep=Script(truncate_and_write))
    assert next(lines) == "short"


def test_follow_a_file_that_appears_later(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "app.out.log"

    def create() -> None:
        path.parent.mkdir()
        path.write_bytes(b"first\nsecond\n")

    sleep = Script(nothing, create)
    lines = follow(str(path), sleep=sleep)
    assert [next(lines), next(lines)] == ["first", "second"]
    assert len(sleep.calls) == 2


def test_follow_ends_when_stop_is_true(tmp_path: Path) -> None:
    path = tmp_path / "app.out.log"
    path.write_bytes(b"")
    seen: list[str] = []
    sleep = Script(append(path, b"one\ntwo\n"))
    for line in follow(str(path), stop=lambda: len(seen) >= 2, sleep=sleep):
        seen.append(line)
    assert seen == ["one", "two"]
    assert len(sleep.calls) == 1  # no wait once stop() is true
    assert list(follow(str(path), stop=lambda: True, sleep=Script())) == []


def test_follow_reads_a_large_backlog_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logfiles, "FOLLOW_READ_LIMIT", 16)
    path = tmp_path / "app.out.log"
    path.write_bytes(b"")
    sleep = Script(append(path, numbered(50)))
    lines = follow(str(path), sleep=sleep)
    got = [next(lines) for _ in range(50)]
    assert got == [f"line {i:06d} of the log" for i in range(50)]
    assert len(sleep.calls) == 1


# -- follow_many --------------------------------------------------------------------------


def test_follow_many_interleaves_files(tmp_path: Path) -> None:
    out, err = tmp_path / "app.out.log", tmp_path / "app.err.log"
    out.write_bytes(b"old out\n")
    sleep = Script(
        append(out, b"out 1\n"),
        append(err, b"err 1\n"),  # err.log did not exist when following started
        lambda: (append(err, b"err 2\n")(), append(out, b"out 2\nout 3\n")()),
        append(err, b"err 3\n"),
    )
    got: list[tuple[str, str]] = []
    for item in follow_many(
        [str(out), str(err), str(out)], stop=lambda: len(got) == 6, sleep=sleep
    ):
        got.append(item)
    assert got == [
        (str(out), "out 1"),
        (str(err), "err 1"),
        (str(out), "out 2"),
        (str(out), "out 3"),
        (str(err), "err 2"),
        (str(err), "err 3"),
    ]
    assert len(sleep.calls) == 4
