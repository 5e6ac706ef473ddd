"""bench/feeds.py's figures say what they measure: feeds/s over the time the answers took, the targets' ratios
as the medians of the ratios within each round, and only a run at the defaults recorded."""

from __future__ import annotations

import json
import socketserver
import sys
import threading
import time

import pytest

from bench import common, feeds
from bench.common import RESULT_KEYS
from bench.feeds import CONTENDERS, MAIN, Phase, compared, figures, full_run, load, parse_args, turns

ANSWER_S = 0.01


class _Serial(socketserver.StreamRequestHandler):
    """A reader that answers one request at a time, each taking ANSWER_S: 100 answers/s at most."""

    lock = threading.Lock()

    def handle(self) -> None:
        while line := self.rfile.readline():
            if line == b"\r\n":
                with self.lock:
                    time.sleep(ANSWER_S)
                self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 128  # the load generator opens its 64 connections at once


@pytest.fixture
def saturated_reader():
    server = _Server(("127.0.0.1", 0), _Serial)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_saturated_reader_at_a_fixed_rate_counts_what_it_answered_not_what_was_offered(saturated_reader):
    """200 feeds/s offered for 0.5 s to a reader that answers 100/s at most: the answers take at least 1 s, so at
    most 100 feeds/s (the nominal phase length gave 200, the offered rate)."""
    r = load("open", saturated_reader, "/v1/feed/%s", ["u"], 32, 200.0, 0.5)
    assert r["requests"] == 100 and r["errors"] == 0
    assert 0 < r["per_s"] < 110


def results_of(rounds: list[list[Phase]], per_s: dict[str, list[float]]) -> dict[str, dict]:
    """Each phase's result: feeds/s by reader and round (p99 1 ms everywhere)."""
    return {p.name: {"per_s": per_s[p.reader][n], "p99": 1.0} for n, phases in enumerate(rounds) for p in phases}


def test_the_targets_ratios_are_medians_of_the_ratios_within_each_round_and_are_recorded(monkeypatch, tmp_path):
    """The machine's drift moves every reader of a round together: here the main reader's medians give 2 processes /
    1 = 1.2 and ranked / fixed 0.8, the rounds' own ratios 1.5 and 0.5, the figures."""
    args = parse_args(["--rounds", "3"])
    rounds = turns(CONTENDERS, args, ["w0"])
    per_s = {MAIN: [100.0, 200.0, 400.0], "2 processes": [150.0, 300.0, 240.0], "fixed blend": [200.0, 400.0, 250.0]}
    comparison = compared(CONTENDERS, rounds, results_of(rounds, per_s))
    assert comparison.ratios == {"reader_two_processes_speedup": 1.5, "reader_ranked_to_fixed": 0.5}
    medians = comparison.feeds_per_s
    assert medians["reader_feeds_per_s_2proc"] / medians["reader_feeds_per_s_1proc"] == pytest.approx(1.2)
    assert medians["reader_feeds_per_s_ranked"] / medians["reader_feeds_per_s_fixed"] == pytest.approx(0.8)

    first = [Phase(f"p{n}", "closed", "", [], 10.0) for n in range(5)]
    scratch = tmp_path / "results.json"
    monkeypatch.setattr(common, "RESULTS", scratch)
    monkeypatch.setattr(sys, "argv", ["/repo/bench/feeds.py"])
    common.record(figures(args, feeds.COMMAND, first, {p.name: {"per_s": 1.0, "p99": 1.0} for p in first}, comparison))
    written = json.loads(scratch.read_text())
    assert set(written) == set(RESULT_KEYS["feeds"].always) | {"reader_p99_ms_2proc", *comparison.ratios}
    assert written["reader_ranked_to_fixed"]["value"] == 0.5


def test_every_other_round_takes_its_turns_in_the_reverse_order():
    """A drift within a round (the machine's other load rising) then favours the first reader of one round and the last
    of the next: over rounds, no reader always goes first."""
    rounds = turns(CONTENDERS, parse_args(["--rounds", "3"]), ["w0"])
    closed = [[p.reader for p in phases if p.mode == "closed"] for phases in rounds]
    opened = [[p.reader for p in phases if p.mode == "open"] for phases in rounds]
    forward = [MAIN, "2 processes", "fixed blend"]
    assert closed == opened == [forward, forward[::-1], forward]


@pytest.mark.parametrize(
    ("argv", "full"),
    [
        ([], True),
        (["--cluster"], True),
        (["--no-record"], True),
        (["--rounds", "1"], False),
        (["--seconds", "5"], False),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_only_a_run_at_the_defaults_is_full(argv, full):
    """A run of other rounds or phase lengths would replace some keys and leave the others from another run."""
    assert full_run(parse_args(argv)) is full
