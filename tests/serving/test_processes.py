"""`recstream serve --workers 2` (a real process tree): two reader processes share the port, both answer valid
feeds, and SIGTERM to the parent stops them all."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from recstream.shell import infra
from recstream.shell.reader import PID_HEADER
from tests.conftest import wait_until
from tests.serving.conftest import World

pytestmark = pytest.mark.integration


def children(pid: int) -> set[int]:
    return {int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()}


def spawned_workers(pids: set[int]) -> set[int]:
    """The worker processes among uvicorn's children (multiprocessing's resource tracker is the other kind)."""
    return {pid for pid in pids if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan would be re-parented and keep running)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_two_reader_processes_answer_valid_feeds_and_stop_together(world: World, tmp_path: Path):
    reader = infra.Child("serve", world.settings.replace(reader_workers=2), tmp_path / "reader.log")
    try:
        reader.wait_ready()  # one process answering: the supervisor may not have spawned the other yet
        wait_until(lambda: len(spawned_workers(children(reader.proc.pid))) >= 2, timeout_s=30, what="both processes")
        processes = children(reader.proc.pid)
        workers = spawned_workers(processes)
        assert len(workers) == 2, f"uvicorn's parent supervises 2 worker processes, found {workers}"
        answered: set[int] = set()
        deadline = time.monotonic() + 30
        while answered != workers and time.monotonic() < deadline:
            for user in world.warm[:10]:  # a fresh connection per request: the kernel picks the process
                response = httpx.get(f"{reader.url}/v1/feed/{user}", params={"limit": 10}, timeout=5)
                body = response.json()
                assert response.status_code == 200 and not body["degraded"] and body["warm"], body
                assert len(body["items"]) == 10 and len({i["item_id"] for i in body["items"]}) == 10
                answered.add(int(response.headers[PID_HEADER.decode()]))
        assert answered == workers, "both processes answered feeds"
    finally:
        reader.stop()
    assert reader.proc.returncode == 0
    assert not [pid for pid in workers if running(pid)], "the parent stopped and reaped its workers before exiting"
    # multiprocessing's resource tracker leaves by itself once the parent's end of its pipe closes
    wait_until(lambda: not any(running(pid) for pid in processes), timeout_s=10, what="no orphan process")
