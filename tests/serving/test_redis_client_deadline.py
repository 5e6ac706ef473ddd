"""The round trip's deadline of serving/redis_client.py, alone (no Redis): when a moved deadline counts."""

from __future__ import annotations

import asyncio
import time

import pytest
from recstream.serving.redis_client import Deadline


async def test_a_deadline_moved_after_it_was_due_still_expires():
    """A round trip that got its connection only once its deadline was due (another's timeout freed it while the
    expiry was on its way) must time out, not win a fresh budget to connect and ask: before, a reader's request
    could take its deadline plus a connect budget (1 s by default) plus another deadline."""
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with Deadline(0.05) as deadline:
            time.sleep(0.06)  # the loop held past the deadline: it is due, its expiry not yet run
            deadline.move(1.0)
            await asyncio.sleep(1.0)
    assert time.monotonic() - started < 0.5  # 1.06 s when the move restarted the count


async def test_a_deadline_moved_before_it_is_due_restarts_the_count():
    """A connection made within the round trip's budget gets its own budget to connect (the reader's settings keep a
    connect's budget apart from a feed's), then the round trip its own again."""
    started = time.monotonic()
    async with Deadline(0.05) as deadline:
        await asyncio.sleep(0.03)
        deadline.move(0.2)
        await asyncio.sleep(0.1)  # past the first budget, within the moved one
    assert time.monotonic() - started >= 0.13
