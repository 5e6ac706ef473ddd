"""BENCHMARKS.md regeneration: every benchmark's tables land in its section, and a partial run erases nothing."""

from __future__ import annotations

import doctest

import pytest
import typer
from rich.table import Table

from bench import common, run_all
from bench.run_all import BENCHES, PLACEHOLDER, TEMPLATE, Bench, Run, previous_blocks, render


def produce_run(value: str) -> Run:
    table = Table(title="producer", show_lines=False)
    table.add_column("client")
    table.add_column("events/s", justify="right")
    table.add_row("recstream EventProducer", value)
    run = Run(Bench("produce"), ".venv/bin/python -m bench.produce", "2026-11-23", "2 cores, 23.5 GiB, AMD EPYC")
    run.seconds, run.tables = 41.0, [common.markdown_table(table)]
    return run


def test_the_template_has_a_section_for_every_benchmark_the_runner_knows():
    assert set(PLACEHOLDER.findall(TEMPLATE.read_text())) == {b.name for b in BENCHES}
    assert "{{header}}" in TEMPLATE.read_text()


def test_a_run_lands_in_its_section_with_command_date_machine_and_markdown_table():
    names = [b.name for b in BENCHES]
    page = render(TEMPLATE.read_text(), {"produce": produce_run("424,929").block()}, "HEADER", names)
    section = page.split("## Producer", 1)[1].split("\n## ", 1)[0]
    assert "`.venv/bin/python -m bench.produce` — 2026-11-23, 2 cores, 23.5 GiB, AMD EPYC, 41 s" in section
    assert "| client | events/s |\n|---|---:|\n| recstream EventProducer | 424,929 |" in section
    assert "HEADER" in page and "{{" not in page
    assert "_Not measured yet: `.venv/bin/python -m bench.run_all --only feeds`._" in page


def test_regenerating_after_a_partial_run_keeps_the_other_benchmarks_blocks():
    names = [b.name for b in BENCHES]
    template = TEMPLATE.read_text()
    first = render(template, {"produce": produce_run("1").block(), "feeds": "feeds table"}, "H", names)
    blocks = previous_blocks(first)
    blocks["produce"] = produce_run("2").block()  # as main() does after `--only produce`
    second = render(template, blocks, "H", names)
    assert "feeds table" in second and "| recstream EventProducer | 2 |" in second
    assert "| recstream EventProducer | 1 |" not in second
    assert render(template, previous_blocks(second), "H", names) == second, "regeneration is idempotent"


def test_bench_modules_doctests_pass():
    for module in (common, run_all):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_benchmarks_are_chosen_in_order_soak_only_on_request_and_unknown_names_rejected():
    assert "soak" not in [b.name for b in run_all.choose(None, None, None)]
    assert [b.name for b in run_all.choose(None, None, "soak")][-1] == "soak"
    with pytest.raises(typer.BadParameter, match="unknown benchmark"):
        run_all.choose("produce,prequentail", None, None)


def test_quick_runs_replace_no_block(monkeypatch, tmp_path, capsys):
    """--quick tables are smoke runs: under prose describing full records they would pass for them."""
    names = [b.name for b in BENCHES]
    page = render(TEMPLATE.read_text(), {"produce": produce_run("424,929").block()}, "H", names)
    output = tmp_path / "BENCHMARKS.md"
    output.write_text(page)
    monkeypatch.setattr(run_all, "ROOT", tmp_path)
    monkeypatch.setattr(run_all, "OUTPUT", output)
    monkeypatch.setattr(run_all, "run", lambda bench, quick: produce_run("1"))
    run_all.main(only="produce", skip=None, also=None, quick=True, write=True)
    assert output.read_text() == page
    assert "--quick: smoke runs, not measurements; BENCHMARKS.md left as it was" in capsys.readouterr().out
