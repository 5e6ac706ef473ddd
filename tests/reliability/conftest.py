"""Fault tests get their own Kafka broker and Redis (they stop, kill and roll back both), one workload, one
model, and the state a clean run of that workload leaves, to compare every faulted run with.

Runs, faults and scoring are the harness the reliability benchmark uses (bench/faults.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from bench.faults import FaultRun, Workload, model_keys
from recstream.contracts.settings import Settings
from recstream.shell import infra
from recstream.store.state_dump import dump_state
from tests.conftest import REPO

N_RECORDS = 10_000  # the synthetic world's first messages: 1,584 users, 1,006 items, 7,410 events
STATE_OF_THE_RUN_ONLY = ("wm",)  # watermarks name the run's own topics and its message offsets


@pytest.fixture(scope="session")
def fault_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A Kafka broker and a Redis only these tests use: they are stopped, killed and rolled back."""
    run_dir = tmp_path_factory.mktemp("fault-services")
    settings = infra.private_settings(run_dir, REPO / ".cache", model_dir=run_dir / "models")
    with infra.running(settings):
        yield settings


@pytest.fixture(scope="session")
def workload() -> Workload:
    return Workload.synthetic(N_RECORDS)


@pytest.fixture(scope="session")
def model(fault_services: Settings, workload: Workload) -> dict[str, bytes]:
    return asyncio.run(model_keys(fault_services, workload))


@pytest.fixture
async def fault_run(
    fault_services: Settings, model: dict[str, bytes], tmp_path: Path
) -> AsyncIterator[Callable[[str], Awaitable[FaultRun]]]:
    """``await fault_run(name)``: a run with its own topics, group and prefix; its workers stop at the end."""
    runs: list[FaultRun] = []

    async def open_run(name: str) -> FaultRun:
        runs.append(await FaultRun.open(fault_services, name, model, tmp_path))
        return runs[-1]

    yield open_run
    for run in runs:
        run.stop()


@pytest.fixture(scope="session")
def clean_state(fault_services: Settings, model: dict[str, bytes], workload: Workload,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:  # fmt: skip
    """What one worker leaves after the whole workload with no fault."""

    async def clean() -> dict[str, object]:
        run = await FaultRun.open(fault_services, "clean", model, tmp_path_factory.mktemp("clean"))
        try:
            run.start_worker()
            await run.prelude(workload)
            await run.offer(workload.events, rate=1e9)
            await run.wait_applied(len(workload.events), 120, "the clean run")
            await run.wait_settled()
            return run_state(run)
        finally:
            run.stop()

    return asyncio.run(clean())


def run_state(run: FaultRun) -> dict[str, object]:
    """Every key of the run's prefix, except what only names its own topics and offsets."""
    return {k: v for k, v in dump_state(run.redis, run.prefix).items() if k not in STATE_OF_THE_RUN_ONLY}
