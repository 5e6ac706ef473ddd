"""bench/worker.py: the raw-consume baseline is timed as the worker is, from its first batch to its last."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from bench import worker
from recstream.contracts.settings import load_settings


def test_the_raw_consume_baseline_starts_its_clock_at_its_first_fetched_batch(monkeypatch):
    """A worker is timed from its first applied batch (bench.worker.time_backlog), so the baseline must not count
    the wait for its first fetch (connecting, the broker's first answer): here 10 s, then 3 batches of 100 events
    a second apart: (300 − 100) events in 2 s, not 300 in 12."""
    clock = SimpleNamespace(now=0.0)
    fetches = iter([10.0, 1.0, 1.0])

    class Consumer:
        def __init__(self, *_: object, **__: object) -> None:
            pass

        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            clock.now += 5.0  # leaving the group is no part of the window either

        async def getmany(self, **_: object) -> dict[int, list[SimpleNamespace]]:
            clock.now += next(fetches)
            return {0: [SimpleNamespace(value=100)]}

    monkeypatch.setattr(worker, "AIOKafkaConsumer", Consumer)
    monkeypatch.setattr(worker, "decode", lambda value, kind, now: ([None] * value, []))
    monkeypatch.setattr(worker, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    assert asyncio.run(worker.raw_consume_rate(load_settings(), 300)) == 100.0
