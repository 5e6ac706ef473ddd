"""The retry loops' waits (recstream/runtime/backoff.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from recstream.runtime.backoff import RetryDelays


def test_the_waits_double_to_the_cap_and_start_over_after_a_success() -> None:
    backoff = RetryDelays(first_s=0.1, max_s=1.0)
    assert [backoff.advance() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.advance() == 0.1


@pytest.mark.parametrize("first_s", [0.5, 1.0])  # below the cap, at it
def test_a_first_wait_up_to_the_cap_is_taken(first_s: float) -> None:
    assert RetryDelays(first_s=first_s, max_s=1.0).advance() == first_s


@pytest.mark.parametrize(("first_s", "max_s"), [(1.5, 1.0), (0.0, 1.0), (-0.1, 1.0)])
def test_a_first_wait_past_the_cap_or_not_positive_is_refused(first_s: float, max_s: float) -> None:
    with pytest.raises(ValueError, match="0 < first_s <= max_s"):
        RetryDelays(first_s=first_s, max_s=max_s)


def test_wait_sleeps_the_announced_delay() -> None:
    backoff = RetryDelays(first_s=0.05, max_s=1.0)
    announced = backoff.delay
    started = time.perf_counter()
    asyncio.run(backoff.wait())
    assert time.perf_counter() - started >= announced
    assert backoff.delay == 2 * announced
