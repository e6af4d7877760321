"""App log files: the daemon's rotating writer, and the readers behind ``pmx logs``.

The daemon reads each app's stdout and stderr pipes and hands every chunk it reads to
the :class:`RotatingLog` of ``$PMX_HOME/logs/NAME.out.log`` or ``NAME.err.log``. The
writer stamps each complete line with the local time and rotates by size, so the logs
of a chatty app never fill the disk. It is the only writer of its file.

``pmx logs`` reads the files directly: :func:`tail_lines` for the last lines,
:func:`follow` / :func:`follow_many` for ``--follow``. The followers poll; they survive
rotation (the file renamed to ``.1`` and a new one created, or the file truncated) and
a file that does not exist yet.

File names and rotation::

    NAME.out.log      current file
    NAME.out.log.1    previous one
    NAME.out.log.2    ...up to NAME.out.log.<backups>; older ones are deleted
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from typing import IO

from pmx.files import open_private

#: Longest line, in bytes without its timestamp and newline. Longer output (including a
#: partial line that has not seen its newline yet) is cut into lines of this size, so a
#: process printing without newlines cannot make the daemon buffer without bound. Every
#: line is cut the same way whatever the pipe reads looked like.
MAX_LINE = 64 * 1024

#: Block size of :func:`tail_lines`, which reads the file backwards.
TAIL_BLOCK = 64 * 1024

#: How much a follower reads from one file per round before moving to the next file.
FOLLOW_READ_LIMIT = 1024 * 1024

#: A follower yields a partial line that grows past this size (external writers only:
#: :class:`RotatingLog` never writes lines this long).
MAX_FOLLOW_LINE = 1024 * 1024

_READ_CHUNK = 64 * 1024


def _timestamp(now: float) -> bytes:
    """``YYYY-MM-DD HH:MM:SS.mmm `` in local time, to the nearest millisecond."""
    seconds, millis = divmod(round(now * 1000), 1000)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
    return f"{stamp}.{millis:03d} ".encode()


def _cut(line: bytes) -> list[bytes]:
    if len(line) <= MAX_LINE:
        return [line]
    return [line[i : i + MAX_LINE] for i in range(0, len(line), MAX_LINE)]


class RotatingLog:
    """The single writer of one log file, with size rotation.

    ``write_lines`` takes raw chunks as read from a pipe. Each complete line is written
    with a ``YYYY-MM-DD HH:MM:SS.mmm `` prefix (local time from ``clock``, taken once per
    chunk); the bytes after the last newline wait for the next chunk. The file is
    flushed at the end of every call.

    Before each line is written, if the file is not empty and the line would take it
    past ``max_bytes``, the file is rotated: ``.1`` -> ``.2`` ... ``.{backups-1}`` ->
    ``.{backups}``, the file -> ``.1``, and a new file is started; numbered files beyond
    ``backups`` are deleted. With ``backups=0`` the old file is simply discarded (it is
    unlinked rather than truncated in place, so a follower still reading it sees an
    inode change and finishes it). A single line larger than ``max_bytes`` still goes
    whole into an empty file.

    If the file is deleted or replaced behind the writer's back, the next call writes to
    a new file at ``path``. ``OSError`` from the file system propagates.
    """

    def __init__(
        self,
        path: str,
        max_bytes: int,
        backups: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if backups < 0:
            raise ValueError(f"backups must be 0 or more, got {backups}")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._clock = clock
        self._partial = b""
        self._fh: IO[bytes] | None = None
        self._ino = (0, 0)
        self._size = 0
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._open()

    def __enter__(self) -> RotatingLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._fh is None

    def write_lines(self, data: bytes) -> None:
        """Write the complete lines of ``data`` (plus any partial line kept from before)."""
        if self._fh is None:
            raise ValueError(f"write to closed log {self.path}")
        if not data:
            return
        parts = (self._partial + data).split(b"\n")
        partial = parts.pop()
        lines: list[bytes] = []
        for part in parts:
            lines.extend(_cut(part))
        while len(partial) > MAX_LINE:
            lines.append(partial[:MAX_LINE])
            partial = partial[MAX_LINE:]
        self._partial = partial
        if lines:
            self._write(lines)

    def close(self) -> None:
        """Write a pending partial line (with a newline) and close the file. Idempotent."""
        if self._fh is None:
            return
        try:
            if self._partial:
                partial, self._partial = self._partial, b""
                self._write([partial])
        finally:
            fh, self._fh = self._fh, None
            if fh is not None:
                fh.close()

    # -- internals --------------------------------------------------------------------

    def _open(self) -> None:
        fh = open_private(self.path, "ab")
        st = os.fstat(fh.fileno())
        self._fh = fh
        self._ino = (st.st_dev, st.st_ino)
        self._size = st.st_size

    def _check_file(self) -> None:
        """Follow the file at ``path``: reopen if it was deleted or replaced; resync size."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == self._ino:
            self._size = st.st_size
            return
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        self._open()

    def _write(self, lines: list[bytes]) -> None:
        self._check_file()
        stamp = _timestamp(self._clock())
        pending: list[bytes] = []
        for line in lines:
            record = b"".join((stamp, line, b"\n"))
            if self._size > 0 and self._size + len(record) > self.max_bytes:
                self._flush(pending)
                pending = []
                self._rotate()
            pending.append(record)
            self._size += len(record)
        self._flush(pending)

    def _flush(self, records: list[bytes]) -> None:
        assert self._fh is not None
        if records:
            self._fh.write(b"".join(records))
        self._fh.flush()

    def _rotate(self) -> None:
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        try:
            self._remove_stale_backups()
            if self.backups == 0:
                os.unlink(self.path)
            else:
                for i in range(self.backups - 1, 0, -1):
                    src = f"{self.path}.{i}"
                    if os.path.exists(src):
                        os.replace(src, f"{self.path}.{i + 1}")
                os.replace(self.path, f"{self.path}.1")
        except FileNotFoundError:
            pass  # the file was removed under us: starting a new one is all that is left
        finally:
            self._open()

    def _remove_stale_backups(self) -> None:
        directory = os.path.dirname(self.path) or "."
        prefix = os.path.basename(self.path) + "."
        for name in os.listdir(directory):
            suffix = name[len(prefix) :]
            if name.startswith(prefix) and suffix.isdigit() and int(suffix) > self.backups:
                try:
                    os.unlink(os.path.join(directory, name))
                except FileNotFoundError:
                    pass


def tail_lines(path: str, n: int) -> list[str]:
    """The last ``n`` lines of ``path``, without their newlines; ``[]`` if it is missing.

    The file is read backwards in blocks of :data:`TAIL_BLOCK` bytes, only as far as
    needed. A last line without a newline counts as a line. Bytes that are not UTF-8
    are replaced.
    """
    if n <= 0:
        return []
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return []
    with fh:
        end = fh.seek(0, os.SEEK_END)
        if end == 0:
            return []
        pos = end
        blocks: list[bytes] = []
        newlines = 0
        # n lines are complete once n + 1 newlines are in hand (the last one may be the
        # file's final newline), or the start of the file is reached.
        while pos > 0 and newlines <= n:
            size = min(TAIL_BLOCK, pos)
            pos -= size
            fh.seek(pos)
            block = fh.read(size)
            blocks.append(block)
            newlines += block.count(b"\n")
    data = b"".join(reversed(blocks))
    if data.endswith(b"\n"):
        data = data[:-1]
    return [line.decode("utf-8", "replace") for line in data.split(b"\n")[-n:]]


class _Follower:
    """Reads what is appended to one file; created at the file's current end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: io.FileIO | None = None
        self._ino = (0, 0)
        self._pos = 0
        self._buf = b""
        self._skip = False  # started in the middle of a line: drop up to its newline
        if self._open():
            assert self._fh is not None
            end = self._fh.seek(0, os.SEEK_END)
            if end > 0:
                self._skip = os.pread(self._fh.fileno(), 1, end - 1) != b"\n"
            self._pos = end

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def poll(self) -> tuple[list[str], bool]:
        """New complete lines, and whether more may be read without waiting."""
        if self._fh is None and not self._open():
            return [], False
        data, more = self._read(FOLLOW_READ_LIMIT)
        lines = self._split(data)
        if more:
            return lines, True
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return lines, False  # renamed away, its successor not created yet
        if (st.st_dev, st.st_ino) != self._ino:
            # Rotated. Lines written to the old file just before the rename may not
            # have been read yet: finish it, then start on the new file.
            rest, _ = self._read(None)
            lines += self._split(rest) + self._end_of_file()
            self.close()
            return lines, True
        if st.st_size < self._pos:
            # Truncated in place: what was past the new size is gone.
            lines += self._end_of_file()
            assert self._fh is not None
            self._fh.seek(0)
            self._pos = 0
            return lines, True
        return lines, False

    def _open(self) -> bool:
        try:
            fh = open(self.path, "rb", buffering=0)
        except FileNotFoundError:
            return False
        st = os.fstat(fh.fileno())
        self._fh = fh
        self._ino = (st.st_dev, st.st_ino)
        self._pos = 0
        self._buf = b""
        self._skip = False
        return True

    def _read(self, limit: int | None) -> tuple[bytes, bool]:
        assert self._fh is not None
        chunks: list[bytes] = []
        total = 0
        while limit is None or total < limit:
            chunk = self._fh.read(_READ_CHUNK)
            if not chunk:
                return b"".join(chunks), False
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks), True

    def _split(self, data: bytes) -> list[str]:
        if not data:
            return []
        self._pos += len(data)
        buf = self._buf + data
        if self._skip:
            newline = buf.find(b"\n")
            if newline < 0:
                self._buf = b""
                return []
            buf = buf[newline + 1 :]
            self._skip = False
        parts = buf.split(b"\n")
        self._buf = parts.pop()
        if len(self._buf) > MAX_FOLLOW_LINE:
            parts.append(self._buf)
            self._buf = b""
        return [part.decode("utf-8", "replace") for part in parts]

    def _end_of_file(self) -> list[str]:
        """The file will not grow any more: its unterminated last line is a line."""
        buf, skip = self._buf, self._skip
        self._buf, self._skip = b"", False
        return [buf.decode("utf-8", "replace")] if buf and not skip else []


def _follow_loop(
    followers: list[_Follower],
    poll: float,
    stop: Callable[[], bool],
    sleep: Callable[[float], object],
) -> Iterator[tuple[str, str]]:
    try:
        while not stop():
            busy = False
            for follower in followers:
                lines, more = follower.poll()
                busy = busy or more
                for line in lines:
                    yield follower.path, line
            if not busy and not stop():
                sleep(poll)
    finally:
        for follower in followers:
            follower.close()


def follow(
    path: str,
    poll: float = 0.1,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[str]:
    """Yield the lines appended to ``path`` from now on, until ``stop()`` is true.

    The starting point is the file's end at the time of the call (not of the first
    ``next()``); if it ends in the middle of a line, the rest of that line is skipped.
    A file that does not exist yet is read from its start once it appears. Only complete
    lines are yielded, without their newline, except that the unterminated end of a file
    that was rotated away or truncated is yielded as a line. ``stop`` is checked before
    each round of reading and before each wait; ``sleep(poll)`` is the wait after a
    round that found nothing more to read.
    """
    loop = _follow_loop([_Follower(path)], poll, stop, sleep)
    return (line for _, line in loop)


def follow_many(
    paths: list[str],
    poll: float = 0.1,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[tuple[str, str]]:
    """:func:`follow` several files at once, yielding ``(path, line)``.

    One polling loop reads every file in turn, in the order given (duplicates ignored);
    within a round, a file's new lines come before the next file's.
    """
    followers = [_Follower(path) for path in dict.fromkeys(paths)]
    return _follow_loop(followers, poll, stop, sleep)
