"""``recstream settings``: every variable, its value here and its default, secrets hidden."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from recstream.contracts.settings import ALL_VARIABLES, SECTIONS, load_settings, variable
from recstream.shell.cli import app


def run(*args: str, **variables: str):
    return CliRunner().invoke(app, ["settings", *args], env={"COLUMNS": "250", **variables})


def test_every_variable_is_listed_with_its_value_and_default():
    listed = run(RECSTREAM_BATCH_MAX="100")
    assert listed.exit_code == 0, listed.output
    lines = {line.split("│")[1].strip(): line for line in listed.output.splitlines() if "│ RECSTREAM_" in line}
    assert set(lines) == {variable(name) for name in ALL_VARIABLES}
    assert [cell.strip() for cell in lines["RECSTREAM_BATCH_MAX"].split("│")[2:4]] == ["100", "5000"]


def test_changed_lists_only_the_settings_off_their_default_and_hides_secrets():
    password, key = "pa55word", "k3y-s3cret"
    listed = run("--changed", RECSTREAM_API_KEY=key, RECSTREAM_REDIS_URL=f"redis://:{password}@127.0.0.1:6390/0")
    assert listed.exit_code == 0, listed.output
    names = [line.split("│")[1].strip() for line in listed.output.splitlines() if "│ RECSTREAM_" in line]
    assert names == ["RECSTREAM_API_KEY", "RECSTREAM_REDIS_URL"]
    assert password not in listed.output and key not in listed.output
    assert "redis://:***@127.0.0.1:6390/0" in listed.output


def test_an_invalid_value_ends_it_naming_the_variable():
    refused = run(RECSTREAM_BATCH_MAX="0")
    assert refused.exit_code == 2 and "RECSTREAM_BATCH_MAX: Input should be greater than 0" in refused.output


def test_the_readme_s_command_lists_every_variable_its_table_names_and_only_what_the_settings_read():
    """README said its one-liner listed every variable; it printed VARIABLES, without ``experiment``
    (RECSTREAM_EXPERIMENT, in the table). The command the README names, ``recstream settings``, is run; the table's
    names are its first column's and those a row's text names (``_SASL_USERNAME`` abbreviates
    RECSTREAM_SASL_USERNAME)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "`recstream settings` lists every one" in readme, "the README's command"
    done = run()
    assert done.exit_code == 0, done.output
    printed = set(re.findall(r"^│ (RECSTREAM_[A-Z0-9_]+) ", done.output, flags=re.MULTILINE))
    lines = readme.splitlines()
    table = lines[lines.index("| variable | default | what |") + 2 :]
    rows = table[: next(i for i, line in enumerate(table) if not line.startswith("|"))]
    named = {f"RECSTREAM{name.removeprefix('RECSTREAM')}" for row in rows
             for name in re.findall(r"`(RECSTREAM_[A-Z0-9_]+|_[A-Z0-9_]+)`", row)}  # fmt: skip
    assert "RECSTREAM_EXPERIMENT" in named and len(named) >= 50
    assert named <= printed, sorted(named - printed)
    fields = sum(len(section.model_fields) for section in SECTIONS.values()) + 1  # and the experiment
    assert len(printed) == fields and set(load_settings().to_env()) <= printed
