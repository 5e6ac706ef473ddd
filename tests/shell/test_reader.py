"""The factory every reader process calls (recstream.shell.reader.app): it tunes that process's garbage collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from recstream.runtime.garbage_collector import YOUNG_THRESHOLD
from recstream.shell import reader


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_each_reader_process_freezes_its_startup_objects_and_collects_young_rarely(restored_gc, monkeypatch):
    monkeypatch.setenv("RECSTREAM_REDIS_URL", "redis://127.0.0.1:1/0")  # building the app connects to nothing
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    reader.app()
    assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == YOUNG_THRESHOLD
