"""The worker's /healthz: red when an agent stopped or stalled, green while each one works or waits.

An in-process server on a real socket with real asyncio tasks as agents; tests/streams/test_resilience.py
stalls an agent of a real worker.
"""

from __future__ import annotations

import asyncio
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest
from recstream.streams import metrics  # noqa: F401 (registers the worker's metrics)
from recstream.streams.liveness import Liveness, serve

from recstream.shell.infra import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def healthz(port: int) -> tuple[int, str]:
    try:
        with urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def served() -> tuple[Liveness, Clock, int]:
    clock, port = Clock(), free_port()
    liveness = Liveness(stall_s=10.0, clock=clock)
    server = serve(port, liveness)
    yield liveness, clock, port
    server.shutdown()
    server.server_close()


async def test_an_agent_that_raised_stays_red_even_when_started_again(served):
    liveness, _, port = served

    async def agent(fail: bool) -> None:
        with liveness.running("recstream.events"):
            await asyncio.sleep(0)
            if fail:
                raise ValueError("a bug")

    assert healthz(port) == (200, "ok\n")
    with pytest.raises(ValueError):
        await asyncio.create_task(agent(fail=True))
    assert healthz(port) == (503, "recstream.events stopped: raised ValueError('a bug')\n")
    await asyncio.create_task(agent(fail=False))  # faust's supervisor may start it again: still red
    assert healthz(port)[0] == 503


async def test_a_cancelled_agent_is_red_until_it_runs_again(served):
    liveness, _, port = served
    started = asyncio.Event()

    async def agent() -> None:
        with liveness.running("recstream.items"):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(agent())
    await started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert healthz(port) == (503, "recstream.items stopped: cancelled\n")
    started.clear()
    task = asyncio.create_task(agent())
    await started.wait()
    assert healthz(port) == (200, "ok\n")
    task.cancel()


@pytest.mark.parametrize(("waited_s", "status"), [(9.9, 200), (10.0, 200), (10.1, 503)])
def test_a_batch_without_an_attempt_for_longer_than_the_stall_limit_is_red(served, waited_s, status):
    liveness, clock, port = served
    liveness.beat("recstream.users")
    clock.now += waited_s
    assert healthz(port)[0] == status
    liveness.beat("recstream.users")  # an attempt ended (applied, or failed and retried): not stuck
    assert healthz(port)[0] == 200
    clock.now += 60
    liveness.idle("recstream.users")  # waiting for messages is never a stall
    assert healthz(port) == (200, "ok\n")


def test_metrics_are_served_beside_healthz(served):
    _, _, port = served
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert b"recstream_worker_stale_watermark_total" in response.read()


def test_a_batch_the_script_refused_is_the_workers_own_failure_not_one_waiting_cures():
    """apply_batch.lua refuses, before its first write, a batch it could not apply whole (a key of the wrong type, a
    number that is not finite), with an error reply starting RECSTREAM_STATE. Retrying the batch cures nothing, so
    it counts as ``other``, which is no sign of life: /healthz turns red after ``worker_stall_s``. Redis's own
    errors stay ``redis_error`` (a sign of life while the batch waits), WRONGTYPE among them."""
    from recstream.streams.processor import WAITING_REASONS, retry_reason
    from redis.exceptions import ResponseError

    refusal = "RECSTREAM_STATE rs:user:u2:seen is a string, expected a zset; nothing of the batch was written"
    assert retry_reason(ResponseError(refusal)) == "other"
    assert "other" not in WAITING_REASONS
    assert retry_reason(ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")) == (
        "redis_error"
    )
    assert retry_reason(ResponseError("ERR user_script:1: RECSTREAM_STATE in a Lua error")) == "redis_error"
