"""bench/adopt.py without MovieLens: a clear failure naming where it looked, before any service starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import adopt


def test_without_movielens_the_run_fails_at_once_saying_where_it_looked(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_:
        adopt.main(["--movielens", str(tmp_path)])
    assert exit_.value.code == 1
    said = " ".join(capsys.readouterr().err.split())  # rich wraps it to the terminal's width
    assert f"MovieLens 100K is not at {tmp_path} (u.data missing): pass --movielens DIR" in said
