"""Keep Python's cyclic garbage collector off the long-lived objects of a worker and of the reader.

Why: a full (generation-2) collection walks every tracked object. In a worker that is ~100k
objects of faust, aiokafka, scipy, pydantic and the live model, measured at 60–200 ms per
collection on these 2 cores, and a live batch of a few thousand events allocates enough
surviving objects to trigger one about every batch: the single largest cost of a batch
under live load. In the reader (FastAPI, pydantic, numpy) a full collection costs ~60–90 ms.
``gc.freeze()`` moves everything alive into a permanent generation that collections skip;
what is allocated afterwards is still collected as usual (and almost all of it is freed by
reference counting anyway).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 50_000
"""Net allocations between two generation-0 collections in the reader and the worker (Python's default: 700)."""


def freeze_long_lived() -> None:
    """Collect once (so no garbage cycle is frozen with the rest), then freeze what is alive.

    Call it when the long-lived set changed: once the worker or the reader has started, after a
    model version was loaded. Frozen objects are still freed by reference counting.
    """
    gc.collect()
    gc.freeze()


def collect_young_rarely() -> None:
    """Keep the cycle collector off the reader's feed path and the worker's batches; call after
    :func:`freeze_long_lived`, before serving or consuming.

    A feed allocates thousands of short-lived containers (parsed candidate lists, the page) that
    reference counting frees at once; with the default threshold (700) they still trigger gen0
    collections, survivors of the requests in flight are promoted, and full collections walk every
    object of the process. Measured on the bench at 32 connections: 1.7 s of 8 s in GC and a p99
    of 142 ms. Freezing what startup built (it lives as long as the process) and collecting gen0
    every YOUNG_THRESHOLD net allocations instead: 7 ms in GC.

    A worker's batch is the same pattern at a larger scale: a few containers per event (the validated
    event, its dicts, its rows), alive until the batch is applied, so with the default threshold a
    300,000-event backlog ran ~4,000 generation-0, ~400 generation-1 and ~20 full collections (1.3–3.1 s
    of its ~8–20 s, in-process replay of bench/worker.py's ranker backlog); with this one 46, 4 and none
    (0.6 s).
    """
    gc.set_threshold(YOUNG_THRESHOLD, 10, 10)


_paused = 0  # blocks inside collector_paused now (a worker's three agents may overlap theirs)
_resume = False  # whether the collector was on when the first of them began


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic cyclic collection while any such block runs; the collector's state before the first is
    restored when the last one ends. Reference counting frees as usual meanwhile.

    Why: what a worker's batch allocates (a validated event and its dicts per event, rows, histories) lives
    until the batch is applied, so every collection during it walks all of that young, live data for nothing:
    with :data:`YOUNG_THRESHOLD` a 300,000-event backlog still spent ~1 s of ~7.5 s of CPU in 53 collections
    (in-process replay of bench/worker.py's ranker backlog). Once the batch is freed, the next collection finds
    a nearly empty young generation. The garbage cycles a batch makes wait for that collection: a batch's worth.

    >>> with collector_paused():
    ...     gc.isenabled()
    False
    >>> gc.isenabled()
    True
    """
    global _paused, _resume
    if _paused == 0:
        _resume = gc.isenabled()
        gc.disable()
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1
        if _paused == 0 and _resume:
            gc.enable()
