"""bench/prequential.py records only the full run at the project defaults."""

from __future__ import annotations

import pytest

from bench.prequential import configure, parse_args, records


@pytest.mark.parametrize(
    ("argv", "recorded"),
    [
        ([], True),
        (["--movielens", "/elsewhere"], True),  # where the data lives changes no figure
        (["--reader-wait-s", "0.5"], False),  # the served rows see what the reader had reloaded by then
        (["--history-share", "0.7"], False),
        (["--no-reader"], False),
        (["--set", "ranker_min_rows=2000"], False),
        (["--shuffle", "1"], False),  # another order of the data: not the record's protocol
        (["--no-clock"], False),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_only_a_full_run_at_the_defaults_records(argv, recorded):
    args = parse_args(argv)
    assert records(args, configure(args)) is recorded
