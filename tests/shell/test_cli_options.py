"""Options out of range end a command before it does anything: exit code 2 and a line naming the option."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recstream.contracts.settings import Settings
from recstream.shell.cli import app
from recstream.shell.infra import free_port


def run(*args: str, **variables: str):
    """In process, with Kafka and Redis on closed ports (and ``variables`` set): a command that gets past its options
    stops at them."""
    env = {"COLUMNS": "200", "RECSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "RECSTREAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", **variables}  # fmt: skip
    return CliRunner().invoke(app, list(args), env=env)


@pytest.mark.parametrize(
    ("command", "option", "refused", "lowest", "highest"),
    [("serve", "--port", (0, 65536), 1, 65535), ("worker", "--metrics-port", (-1, 65536), 0, 65535)],
)
def test_a_port_outside_its_range_is_refused_naming_the_option(command, option, refused, lowest, highest):
    """serve --port 99999 listened on 34463 (the kernel wraps it); the worker's died in bind() with a traceback."""
    below, above = (run(command, option, str(port)) for port in refused)
    assert below.exit_code == above.exit_code == 2
    assert f"Invalid value for '{option}': Input should be greater than or equal to {lowest}" in below.output
    assert f"Invalid value for '{option}': Input should be less than or equal to {highest}" in above.output
    for port in (lowest, highest):  # accepted: the command goes on and stops at the closed service
        done = run(command, option, str(port))
        assert done.exit_code == 1 and "cannot reach" in done.output, done.output


@pytest.mark.parametrize(
    ("option", "value", "refused"),
    [
        ("--workers", "0", "Input should be greater than or equal to 1"),
        ("--workers", "1", None),
        ("--workers", "2", None),
        ("--workers", "63", None),
        ("--workers", "64", None),
        ("--workers", "65", "Input should be less than or equal to 64"),
        ("--host", "", "String should match pattern"),
        ("--host", "a b", "String should match pattern"),
        ("--host", "localhost", None),
        ("--host", "::1", None),
    ],
)
def test_serve_names_a_bad_reader_setting_as_given_the_option_or_the_variable(option, value, refused):
    """``serve --workers 0`` said "RECSTREAM_READER_WORKERS: ...", a variable the user had not set; ``serve --host ""``
    bound the variable's interface instead, and ``--host "a b"`` reached uvicorn unchecked. A value the setting
    refuses (workers: 1 to 64) is named by the option when it came from the option, by the variable when it came
    from the environment."""
    variable = f"RECSTREAM_READER_{option.removeprefix('--').upper()}"
    for done, named, other in (
        (run("serve", option, value), option, variable),
        (run("serve", **{variable: value}), variable, option),
    ):
        if refused:
            assert done.exit_code == 2 and f"{named}: {refused}" in done.output, done.output
            assert other not in done.output
        else:
            assert done.exit_code == 1 and "cannot reach Redis" in done.output, done.output


@pytest.mark.parametrize(
    ("command", "option", "value", "variable", "refused"),
    [
        ("serve", "--host", "localhost", "RECSTREAM_READER_HOST", "a b"),
        ("serve", "--port", "8081", "RECSTREAM_READER_PORT", "0"),
        ("worker", "--metrics-port", "0", "RECSTREAM_WORKER_METRICS_PORT", "65536"),
    ],
)
def test_an_option_overrides_a_variable_the_settings_refuse(command, option, value, variable, refused):
    """``RECSTREAM_READER_PORT=0 recstream serve --port 8081`` ended at the variable the option overrides, and so
    did the line naming an unreachable service, which read the settings from the environment alone."""
    done = run(command, option, value, **{variable: refused})
    assert done.exit_code == 1 and "cannot reach" in done.output and variable not in done.output, done.output


@pytest.mark.integration
def test_serve_binds_where_its_host_and_port_options_say(services: Settings, monkeypatch: pytest.MonkeyPatch):
    """The options reach the reader over the variables, even ones the settings refuse."""
    from recstream.shell import reader

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(reader, "serve", lambda **given: calls.append(given))
    port = free_port()
    env = {**services.to_env(), "RECSTREAM_READER_HOST": "a b", "RECSTREAM_READER_PORT": "0"}
    done = CliRunner().invoke(app, ["serve", "--host", "localhost", "--port", str(port)], env=env)
    assert done.exit_code == 0, done.output
    assert calls == [{"host": "localhost", "port": port, "workers": 1, "log_level": "warning"}]


def test_worker_binds_its_metrics_port_option_over_a_refused_variable_and_names_it_when_taken():
    """Its port in use is named as the user gave it: the option, not the variable it overrode."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run("worker", "--metrics-port", str(port), RECSTREAM_WORKER_METRICS_PORT="65536")
    assert done.exit_code == 2, done.output
    assert done.output == f"cannot serve metrics on 127.0.0.1:{port} (--metrics-port): Address already in use\n"


@pytest.mark.parametrize("holdout", ["-0.01", "1", "1.5", "nan"])
def test_train_refuses_a_holdout_share_outside_0_to_1(holdout):
    done = run("train", "--holdout", holdout)
    assert done.exit_code == 2 and "Invalid value for '--holdout'" in done.output and "[0, 1)" in done.output


@pytest.mark.parametrize("holdout", ["0", "0.99"])
def test_train_takes_a_holdout_share_from_0_to_below_1(holdout):
    done = run("train", "--holdout", holdout)
    assert done.exit_code == 1 and "cannot reach Kafka" in done.output, done.output


@pytest.mark.parametrize(("option", "limit"), [("--regularization", 1e6), ("--alpha", 1e4), ("--anchor", 1e6)])
def test_train_refuses_regularization_or_alpha_past_their_bound_in_one_line_before_the_log(option, limit):
    """``train --regularization 1e40`` read the whole log, then ended in implicit's NaN traceback."""
    below, at, above = (repr(v) for v in (math.nextafter(limit, 0), limit, math.nextafter(limit, math.inf)))
    for accepted in (below, at):  # the command goes on and stops at the closed service
        done = run("train", option, accepted)
        assert done.exit_code == 1 and "cannot reach Kafka" in done.output, done.output
    done = run("train", option, above)
    assert done.exit_code == 2
    assert done.output == f"{option}: Input should be less than or equal to {limit:.0f}\n", done.output


def test_train_refuses_a_negative_anchor_in_one_line_and_takes_0():
    done = run("train", "--anchor", "0")
    assert done.exit_code == 1 and "cannot reach Kafka" in done.output, done.output
    done = run("train", "--anchor", "-0.5")
    assert done.exit_code == 2 and done.output == "--anchor: Input should be greater than or equal to 0\n", done.output


def test_import_refuses_a_delimiter_of_more_than_one_character(tmp_path: Path):
    rows = tmp_path / "rows.csv"
    rows.write_text("user_id,item_id,ts\nu1,i1,1700000000\n")
    done = run("import", str(rows), "--delimiter", "ab")
    assert done.exit_code == 2 and "--delimiter: expected one character or 'tab', got 'ab'" in done.output


def test_produce_takes_at_least_one_synthetic_event():
    """--synthetic -5 produced nothing and said nothing."""
    assert [run("produce", "--synthetic", n).exit_code for n in ("-5", "0")] == [2, 2]
    for n in ("1", "2"):
        done = run("produce", "--synthetic", n)
        assert done.exit_code == 1 and "cannot reach Kafka" in done.output, done.output


@pytest.mark.integration
def test_produce_synthetic_publishes_as_many_events_as_asked(isolated_settings: Settings):
    """``produce --synthetic 2000`` printed "582 events in 1,426 messages": N counted users and items too."""
    done = CliRunner().invoke(app, ["produce", "--synthetic", "300"], env=isolated_settings.to_env())
    assert done.exit_code == 0, done.output
    assert done.output.startswith("300 events in "), done.output


def test_produce_refuses_a_negative_world_seed_naming_the_option():
    """``produce --synthetic 10 --seed -1`` ended in numpy's ValueError traceback, naming no option (demo's seed
    was checked, produce's was not)."""
    refused, accepted = (run("produce", "--synthetic", "10", "--seed", seed) for seed in ("-1", "0"))
    assert refused.exit_code == 2 and "Invalid value for '--seed'" in refused.output, refused.output
    assert accepted.exit_code == 1 and "cannot reach" in accepted.output, accepted.output


@pytest.mark.parametrize("command", [["serve"], ["worker", "--metrics-port", "0"]], ids=lambda c: c[0])
def test_serve_and_worker_take_only_the_log_levels_uvicorn_knows_in_any_case(command: list[str]):
    """``serve --log-level verbose`` raised KeyError inside uvicorn, after Redis had answered; ``worker --log-level``
    took any word (faust fails on an unknown one only once it starts)."""
    import uvicorn.config

    from recstream.shell.cli import LogLevel

    assert [level.value for level in LogLevel] == list(uvicorn.config.LOG_LEVELS)
    refused, accepted = run(*command, "--log-level", "verbose"), run(*command, "--log-level", "INFO")
    assert refused.exit_code == 2 and "Invalid value for '--log-level'" in refused.output, refused.output
    assert accepted.exit_code == 1 and "cannot reach" in accepted.output, accepted.output


@pytest.mark.parametrize(
    ("command", "options"),
    [("train", "--file, --movielens"), ("produce", "--file, --movielens, --synthetic")],
)
def test_two_sources_are_refused_naming_the_sources_the_command_has(command: str, options: str):
    """train said "give exactly one of --file, --movielens, --synthetic", and has no --synthetic."""
    done = run(command, "--file", "README.md", "--movielens", "tests")
    assert done.exit_code == 2 and done.output.strip() == f"give exactly one of {options}", done.output


def test_produce_without_a_source_is_refused_naming_its_sources():
    """The check moved out of the shared record reader into produce itself (train made it twice): still made."""
    done = run("produce")
    assert done.exit_code == 2 and done.output.strip() == "give exactly one of --file, --movielens, --synthetic"
