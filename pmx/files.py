"""Files only their owner can read: what pmx writes under ``$PMX_HOME`` (the dump holds
the apps' ``--env`` values, the logs what the apps print, the lock is what a daemon
holds). Each is created 0600 and, if it already existed with a wider mode, narrowed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

PRIVATE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) if needed; it ends mode 0700 either way."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)


def open_private(path: Path | str, mode: str = "ab") -> IO[Any]:
    """``open(path, mode)`` for "ab", "wb", "a", "w" or "a+", the file 0600."""
    flags = os.O_CREAT | os.O_CLOEXEC
    flags |= os.O_RDWR if "+" in mode else os.O_WRONLY
    flags |= os.O_APPEND if mode.startswith("a") else os.O_TRUNC
    fd = os.open(path, flags, PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (a 0600 temporary file, renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    with open_private(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
