"""The README's quick start runs as printed against the real reader."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.conftest import REPO
from tests.serving.conftest import WORLD_KEY, LiveReader, World, isolated_topics

pytestmark = pytest.mark.integration


def quick_start() -> str:
    section = REPO.joinpath("README.md").read_text().split("## Python client", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_quick_start_is_at_most_ten_lines_and_runs(world: World, capsys):
    code = quick_start()
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    settings = asyncio.run(isolated_topics(world.settings))  # its events reach no worker of the world
    with LiveReader(settings) as live:
        exec(code.replace("http://127.0.0.1:8080", live.url).replace("your-key", WORLD_KEY), {})
    printed = capsys.readouterr().out
    assert printed.startswith("[(") and "'" in printed, "the next page, as (item, source, reason)"
    assert world.redis().get("rs:user:alice:prefs") == '{"categories":["jazz"],"not_interested":[]}'
