"""`recstream demo`, the README's first command, end to end: it starts everything (Prometheus included), serves the
simulated users' feeds, applies their events, exits 0 when its time is up and leaves no process behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from recstream.shell.infra import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """Running (not a zombie waiting for its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_demo_serves_feeds_applies_events_and_stops_everything_it_started(tmp_path: Path):
    env = {
        **os.environ,
        "RECSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port(span=2)}",
        "RECSTREAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "RECSTREAM_READER_PORT": str(free_port()),
        "RECSTREAM_WORKER_METRICS_PORT": str(free_port()),
        "RECSTREAM_RUN_DIR": str(tmp_path / "run"),
        "RECSTREAM_MODEL_DIR": str(tmp_path / "models"),
        "RECSTREAM_CACHE_DIR": str(REPO / ".cache"),
        "COLUMNS": "200",
    }
    # 25 s at the demo's 20 feeds/s: ~500 feeds, 200 needed
    argv = [sys.executable, "-m", "recstream.shell.cli", "demo", "--seconds", "25", "--history-min", "5"]
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
    out = done.stdout + done.stderr
    pids = [int(p) for p in re.findall(r"(?:started \w+ pid|started \(pid) (\d+)", out)]
    assert done.returncode == 0, out[-4000:]
    assert len(pids) == 5, out[-4000:]  # redis, kafka, worker, reader, prometheus
    assert re.search(r"prometheus started \(pid \d+\) on port \d+", out), out[-4000:]
    assert not [pid for pid in pids if alive(pid)], out[-4000:]

    feeds, failed = map(int, re.search(r"([\d,]+) feeds \((\d+) failed\)", out.replace(",", "")).groups())
    assert feeds >= 200 and failed <= feeds // 100, out[-4000:]
    applied, history, posted = (
        int(x.replace(",", ""))
        for x in re.search(r"applied by the worker: ([\d,]+) \(([\d,]+) of the history, ([\d,]+) posted", out).groups()
    )
    assert posted > 0 and applied > history, out[-4000:]
