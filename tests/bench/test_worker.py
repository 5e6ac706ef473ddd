"""bench/worker.py: the raw-consume baseline is timed as the worker is, from its first batch to its last; Redis' busy
time per event counts what Redis did once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import redis

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


@pytest.mark.integration  # a real Redis
def test_redis_busy_time_counts_a_script_s_commands_once(isolated_settings):
    """A script whose commands are nearly all of its time (5 unions of a 10,000-member sorted set): the measure is
    about the script's own time as Redis accounts it (EVAL's usec), where INFO commandstats, summed, counted the
    unions twice (in EVAL's time and each on its own), about 2×."""
    client = redis.Redis.from_url(isolated_settings.redis.url)
    source, target = (f"{isolated_settings.redis.prefix}:{name}" for name in ("source", "target"))
    client.zadd(source, {f"m{k}": k for k in range(10_000)})

    def script_us() -> float:
        return float(client.info("commandstats").get("cmdstat_eval", {}).get("usec", 0))

    before, script = worker.redis_cpu_us(client), script_us()
    client.eval("for i = 1, 5 do redis.call('ZUNIONSTORE', KEYS[2], 1, KEYS[1]) end", 2, source, target)
    busy, script = worker.redis_cpu_us(client) - before, script_us() - script
    client.close()
    assert busy <= 1.5 * script + 10_000, "counted once (INFO cpu moves in steps of up to 10 ms)"
    assert busy >= 0.1 * script, "the script's work is seen (CPU time: less than EVAL's wall time on a busy machine)"
