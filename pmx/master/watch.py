"""``--watch``: a rolling reload when a watched Python file changes.

watchfiles batches changes (its debounce) so that saving several files, or an editor's
write-then-rename, gives one reload. Its Python filter looks only at Python files and
ignores directories such as ``__pycache__``, ``.git`` and ``.venv``. A change during a
reload is picked up by one more reload once that one ends.
"""

from __future__ import annotations

import asyncio
import logging
import os

from watchfiles import PythonFilter, awatch

from pmx.master.roles import Replacer, Watched
from pmx.master.states import AppState

log = logging.getLogger("pmx.master")


async def watch(master: Watched, reloader: Replacer, debounce_ms: int = 400) -> None:
    paths = master.config.watch
    log.info("watching %s for changes", ", ".join(paths))
    pending = False
    async for changes in awatch(*paths, watch_filter=PythonFilter(), debounce=debounce_ms,
                                step=50):
        names = sorted({os.path.relpath(p, master.config.app_dir or ".") for _, p in changes})
        log.info("changed: %s", ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
        pending = True
        while pending:
            if master.state is not AppState.RUNNING:
                break
            if reloader.busy:
                await asyncio.sleep(0.2)
                continue
            pending = False
            reloader.start_reload()
