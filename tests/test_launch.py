"""Starting a worker process (pmx.master.workers.launch) and its shared load slot."""

from __future__ import annotations

import os
import sys

import pytest

from pmx.config import AppConfig
from pmx.loadslot import LoadSlot
from pmx.master.workers import launch


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd is Linux's")
def test_the_load_slot_lives_in_memory_not_in_tmpdir():
    slot = LoadSlot.create()
    try:
        assert os.readlink(f"/proc/self/fd/{slot.fd}").startswith("/memfd:")
        slot.put(1, 2, 3, 4, 5)
        assert slot.raw()[:5] == (1, 2, 3, 4, 5)
    finally:
        slot.close()


def test_a_worker_that_cannot_be_started_leaves_no_descriptor_behind(monkeypatch):
    config = AppConfig(app="tests.apps.plain:app").validate()
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    before = open_fds()
    with pytest.raises(FileNotFoundError):
        launch(config, 1, 0.0)
    assert open_fds() == before
