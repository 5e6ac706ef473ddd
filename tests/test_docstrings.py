"""The examples in docstrings run, under each module's installed name (``recstream.models.ctr``, …), and the
benchmarks' (``bench.scale``, …: their helpers' examples are how a figure's arithmetic is checked).

pytest's ``--doctest-modules`` would import the files by their folder names (``models.ctr``); the
package refuses those names, so the examples are collected here from the installed package instead.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import bench
from tests.test_layers import MODULES

BENCHMARKS = {f"bench.{m.name}" for m in pkgutil.iter_modules(bench.__path__)}


def _with_examples() -> list[str]:
    finder = doctest.DocTestFinder()
    names = sorted([*MODULES, *BENCHMARKS])
    return [name for name in names if any(t.examples for t in finder.find(importlib.import_module(name)))]


@pytest.mark.parametrize("name", _with_examples())
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (output above)"


def test_the_pure_public_apis_have_examples():
    """A reader learns each model's contract, the blend's and the cursor's from its docstring (river's style)."""
    pure = {f"recstream.models.{m}" for m in ("ctr", "bandit", "user_step", "history")}
    pure |= {f"recstream.serving.{m}" for m in ("blend", "cursor", "user_state", "feed_query")}
    assert pure <= set(_with_examples())
