"""The collector settings the worker and the reader start with (recstream/runtime/garbage_collector.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from recstream.runtime.garbage_collector import (
    YOUNG_THRESHOLD,
    collect_young_rarely,
    collector_paused,
    freeze_long_lived,
)


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


@pytest.mark.parametrize("was_enabled", [True, False])
def test_overlapping_pauses_restore_the_collector_when_the_last_one_ends(collector, was_enabled):
    """The worker's agents pause it for their batches, which overlap on one event loop and end in any order."""
    if was_enabled:
        gc.enable()
    first, second = collector_paused(), collector_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second batch is still running
    second.__exit__(None, None, None)
    assert gc.isenabled() is was_enabled
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a failed batch attempt")
    assert gc.isenabled() is was_enabled
