"""The collector settings the worker and the reader start with (recstream/runtime/garbage_collector.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from recstream.runtime.garbage_collector import YOUNG_THRESHOLD, collect_young_rarely, freeze_long_lived


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def collector() -> Iterator[None]:
    """Automatic collections off (only the code under test collects); the process's own settings restored."""
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        if enabled:
            gc.enable()


def test_freezing_collects_garbage_cycles_first_and_freezes_what_is_alive(collector):
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the cycle collector frees it
    cycle = weakref.ref(a)
    del a, b
    kept = Node()
    freeze_long_lived()
    assert cycle() is None
    assert gc.get_freeze_count() > 0
    assert gc.is_tracked(kept) and kept not in gc.get_objects()


def test_the_reader_collects_the_young_generation_rarely(collector):
    collect_young_rarely()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
