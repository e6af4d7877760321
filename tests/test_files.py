"""Files under $PMX_HOME are the user's own: 0600 files in 0700 directories, whatever
the umask and whatever modes they had before."""

from __future__ import annotations

import os
import stat

import pytest

from pmx.daemon.paths import Home
from pmx.files import open_private, private_dir, write_private
from pmx.logfiles import RotatingLog


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    old = os.umask(0)
    yield
    os.umask(old)


def test_a_directory_that_existed_open_is_narrowed(tmp_path, open_umask):
    home = Home(tmp_path / "home")
    home.root.mkdir(mode=0o755)
    home.logs.mkdir(mode=0o777)
    home.create()
    assert (mode(home.root), mode(home.logs)) == (0o700, 0o700)
    private_dir(tmp_path / "new" / "deep")
    assert mode(tmp_path / "new" / "deep") == 0o700


@pytest.mark.parametrize("kind", ["ab", "a", "wb", "w", "a+"])
def test_open_private_creates_and_narrows(tmp_path, open_umask, kind):
    new, old = tmp_path / "new", tmp_path / "old"
    old.write_bytes(b"before\n")
    os.chmod(old, 0o644)
    for path in (new, old):
        with open_private(path, kind) as fh:
            fh.write(b"x" if "b" in kind else "x")
        assert mode(path) == 0o600
    assert old.read_bytes() == (b"before\nx" if kind.startswith("a") else b"x")


def test_write_private_replaces_whole_and_private(tmp_path, open_umask):
    dump = tmp_path / "dump.json"
    dump.write_text("old and long\n")
    os.chmod(dump, 0o644)
    write_private(dump, '{"SECRET_TOKEN": "s3cret"}\n')
    assert dump.read_text() == '{"SECRET_TOKEN": "s3cret"}\n'
    assert mode(dump) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.json"]


def test_log_files_are_private(tmp_path, open_umask):
    log = RotatingLog(str(tmp_path / "app.out.log"), max_bytes=100, backups=2)
    for _ in range(5):
        log.write_lines(b"a line of the app's output, long enough to rotate\n")
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 3  # the log and two rotated ones
    assert {mode(tmp_path / name) for name in names} == {0o600}


def test_logs_takes_an_app_name_not_a_path(tmp_path):
    from tests.conftest import run_pmx

    result = run_pmx("logs", "../../etc/passwd", env={**os.environ, "PMX_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: Invalid value for 'NAME': '../../etc/passwd' is not a valid app name: "
        "expected letters, digits, '.', '_' or '-'.")
