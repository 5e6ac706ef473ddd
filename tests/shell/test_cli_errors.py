"""An unreachable Kafka or Redis ends every command (the real CLI, a child process) with one line on stderr naming
the address and its variable, and exit code 1: no traceback, no log records of the clients."""

from __future__ import annotations

import importlib.util
import itertools
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
import redis

from recstream.contracts.feedback import MAX_VALUE, MAX_WEIGHT
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.shell.infra import free_port, private_settings
from recstream.sim.world import World, WorldConfig

REPO = Path(__file__).resolve().parents[2]


def cli(settings: Settings, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """The command in a child process; ``stdin``: written to its standard input, a pipe."""
    env = {**settings.environment(os.environ), "OPENBLAS_NUM_THREADS": "1", **env}
    command = [sys.executable, "-m", "recstream.shell.cli", *args]
    return subprocess.run(
        command, env=env, cwd=REPO, input=stdin, capture_output=True, text=True, timeout=240, check=False
    )


def assert_one_line(done: subprocess.CompletedProcess[str], service: str, address: str, variable: str) -> None:
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"cannot reach {service} at {address} ({variable}): "), done.stderr


@pytest.fixture
def nothing_listens(tmp_path: Path) -> Settings:
    """Settings whose Kafka and Redis ports are closed."""
    return private_settings(tmp_path, tmp_path, model_dir=tmp_path / "models", worker_metrics_port=0)


@pytest.mark.parametrize(
    "command",
    [
        ["produce", "--synthetic", "10"],
        ["import", "README.md"],
        ["train"],
        ["infra", "topics"],
        ["experiment", "report", "ab"],
        ["rebuild"],
        ["worker"],
        ["worker", "--log-level", "info"],
    ],
    ids=" ".join,
)
def test_a_closed_kafka_port_is_one_line_naming_the_bootstrap(nothing_listens: Settings, command: list[str]):
    done = cli(nothing_listens, *command)
    assert_one_line(done, "Kafka", nothing_listens.kafka.bootstrap, "RECSTREAM_KAFKA_BOOTSTRAP")


def test_a_misspelled_variable_is_one_warning_line_before_the_error_line(nothing_listens: Settings):
    done = cli(nothing_listens, "train", RECSTREAM_BATCH_MAXX="10")
    warning, error = done.stderr.splitlines()
    assert warning == (
        "RECSTREAM_BATCH_MAXX is not a recstream setting, ignored: no such setting (did you mean RECSTREAM_BATCH_MAX?)"
    )
    assert done.returncode == 1 and error.startswith(f"cannot reach Kafka at {nothing_listens.kafka.bootstrap} ")


def test_the_old_loglevel_spelling_still_works_and_says_it_is_deprecated(nothing_listens: Settings):
    done = cli(nothing_listens, "worker", "--loglevel", "info")
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == "worker --loglevel is deprecated: use --log-level"
    assert done.stderr.splitlines()[1].startswith(f"cannot reach Kafka at {nothing_listens.kafka.bootstrap} ")


def test_worker_and_serve_spell_the_log_level_option_alike(nothing_listens: Settings):
    for command in ("worker", "serve"):
        shown = cli(nothing_listens, command, "--help").stdout
        assert "--log-level" in shown and "--loglevel" not in shown, command


@pytest.mark.parametrize("option", [True, False], ids=["--metrics-port", "RECSTREAM_WORKER_METRICS_PORT"])
def test_a_metrics_port_in_use_is_one_line_naming_it_before_any_service(nothing_listens: Settings, option: bool):
    """It ended in bind()'s OSError traceback, once Kafka and Redis had answered."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        given = ("--metrics-port", str(port)) if option else ()
        done = cli(nothing_listens.replace(worker_metrics_port=port), "worker", *given)
    variable = "--metrics-port" if option else "RECSTREAM_WORKER_METRICS_PORT"
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"cannot serve metrics on 127.0.0.1:{port} ({variable}): Address already in use\n"


def test_serve_with_a_closed_redis_port_is_one_line_naming_the_url(nothing_listens: Settings):
    """The reader starts without Kafka (its write routes answer 503) but not without Redis."""
    done = cli(nothing_listens, "serve", "--port", str(free_port()))
    assert_one_line(done, "Redis", nothing_listens.redis.url, "RECSTREAM_REDIS_URL")


def test_the_redis_password_stays_out_of_the_line(nothing_listens: Settings):
    secret = nothing_listens.replace(redis_url=f"redis://app:s3cret@127.0.0.1:{free_port()}/0")
    done = cli(secret, "serve")
    assert_one_line(done, "Redis", secret.redis.url.replace("s3cret", "***"), "RECSTREAM_REDIS_URL")
    assert "s3cret" not in done.stderr


SPARK = pytest.param(
    "spark", marks=pytest.mark.skipif(importlib.util.find_spec("pyspark") is None, reason="no spark extra")
)


@pytest.mark.parametrize("engine", ["implicit", SPARK])
def test_train_from_a_file_with_a_closed_redis_port_is_one_line(nothing_listens: Settings, tmp_path: Path, engine):
    """Training from a file needs no Kafka, but its model is published to Redis: the closed port is one line."""
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(map(orjson.dumps, itertools.islice(World(WorldConfig(seed=1)).events(), 3000))))
    args = ("--file", str(events), "--factors", "4", "--iterations", "1", "--holdout", "0", "--engine", engine)
    done = cli(nothing_listens, "train", *args)
    assert_one_line(done, "Redis", nothing_listens.redis.url, "RECSTREAM_REDIS_URL")


def test_train_on_spark_without_pyspark_is_one_line_naming_the_extra(nothing_listens: Settings, tmp_path: Path):
    """Refused before reading the log (the closed Kafka port is never met)."""
    shadow = tmp_path / "no-pyspark" / "pyspark"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named pyspark')\n")
    done = cli(nothing_listens, "train", "--engine", "spark", PYTHONPATH=str(shadow.parent))
    assert done.returncode == 1, done.stderr
    assert done.stderr == "--engine spark needs pyspark, the optional extra: pip install 'recstream[spark]'\n"


@pytest.mark.integration
@pytest.mark.parametrize("command", [["worker"], ["rebuild"]], ids=" ".join)
def test_a_closed_redis_port_behind_a_live_kafka_is_one_line(
    isolated_settings: Settings, tmp_path: Path, command: list[str]
):
    settings = isolated_settings.replace(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", model_dir=tmp_path, worker_metrics_port=0
    )
    done = cli(settings, *command)
    assert_one_line(done, "Redis", settings.redis.url, "RECSTREAM_REDIS_URL")


@pytest.mark.integration
@pytest.mark.parametrize("command", [["serve"], ["worker"], ["rebuild"]], ids=" ".join)
def test_a_database_the_redis_refuses_is_one_line_naming_the_url(
    isolated_settings: Settings, tmp_path: Path, command: list[str]
):
    """Database 99 of a Redis with the default 16: ``recstream serve`` ended in ResponseError's traceback."""
    url = isolated_settings.redis.url.rsplit("/", 1)[0] + "/99"
    settings = isolated_settings.replace(redis_url=url, model_dir=tmp_path, worker_metrics_port=0)
    done = cli(settings, *command)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"Redis at {url} refuses database 99 (RECSTREAM_REDIS_URL): DB index is out of range\n"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("pointer", "version"),
    [(b"20261201T000000Z-abcdef", "20261201T000000Z-abcdef"), (b"\xff\xfe", "\\xff\\xfe")],
    ids=["missing", "not-utf8"],
)
def test_a_rebuild_whose_current_model_is_not_in_the_model_folder_is_one_line_and_changes_nothing(
    isolated_settings: Settings, tmp_path: Path, pointer: bytes, version: str
):
    """``model:current`` names a version RECSTREAM_MODEL_DIR does not hold (another host's folder, a version deleted):
    ArtifactError's traceback, once Kafka and Redis had answered. A pointer that is not UTF-8 is such a name (it was
    UnicodeDecodeError's traceback)."""
    models = tmp_path / "models"
    settings = isolated_settings.replace(model_dir=models)
    client = redis.Redis.from_url(settings.redis.url)
    keys = Keys.of(settings)
    client.set(keys("model:current"), pointer)
    client.hset(keys("totals"), "views", 7)  # derived: deleted by a rebuild that runs
    done = cli(settings, "rebuild")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"model {version} (model:current) cannot be read from {models} (RECSTREAM_MODEL_DIR): "
        f"{models / version}: no such model version\n"
    )
    assert client.hget(keys("totals"), "views") == b"7"


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["produce", "--file", "no-such.jsonl"], "'--file': file 'no-such.jsonl' does not exist"),
        (["produce", "--file", "tests"], "'--file': file 'tests' is a directory"),
        (["produce", "--movielens", "no-such-folder"], "'--movielens': dir 'no-such-folder' does not exist"),
        (["train", "--movielens", "README.md"], "'--movielens': dir 'README.md' is a file"),
        (["train", "--file", "no-such.jsonl"], "'--file': file 'no-such.jsonl' does not exist"),
        (["demo", "--movielens", "no-such-folder"], "'--movielens': dir 'no-such-folder' does not exist"),
        (["experiment", "report", "ab", "--file", "no-such.jsonl"], "'--file': file 'no-such.jsonl' does not exist"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_a_path_option_that_names_nothing_readable_is_a_usage_error_before_anything_runs(
    nothing_listens: Settings, command: list[str], says: str
):
    """A mistyped path ended in a traceback once the services were up (FileNotFoundError deep in the reading);
    now the option is checked first: exit 2, the option and the path named, before any service is reached."""
    done = cli(nothing_listens, *command)
    assert done.returncode == 2 and says in " ".join(done.stderr.replace("│", " ").split()), done.stderr


@pytest.mark.parametrize("command", ["produce", "train"])
def test_a_movielens_folder_without_its_ratings_is_one_line_and_a_usage_error(
    nothing_listens: Settings, tmp_path: Path, command: str
):
    """A folder that exists but lacks ``u.data`` ended in a FileNotFoundError traceback mid-stream."""
    folder = tmp_path / "ml"
    folder.mkdir()
    for name in ("u.genre", "u.item", "u.user"):
        (folder / name).write_text("")
    done = cli(nothing_listens, command, "--movielens", str(folder))
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and f"{folder / 'u.data'} is missing: is {folder} a MovieLens 100K folder?" in said
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.integration
def test_train_on_a_file_without_one_valid_event_says_why_in_lines_not_a_traceback(
    isolated_settings: Settings, tmp_path: Path
):
    """Every line refused (times in seconds, the commonest mistake): train raised ValueError out of the command, and
    the refused lines, whose reasons say what is wrong, were dropped without a word."""
    path = tmp_path / "seconds.jsonl"
    path.write_text("".join(f'{{"type":"view","user_id":"u{k}","item_id":"i1","ts":1700000000}}\n' for k in range(3)))
    settings = isolated_settings.replace(model_dir=tmp_path / "models")
    done = cli(settings, "train", "--file", str(path))
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "skipped line 1: ts: Input should be greater than or equal to 631152000000" in said
    assert "the log holds no valid events to train on (3 records refused)" in said


@pytest.mark.parametrize(
    ("args", "says", "code"),
    [(["[/x]"], "experiment [/x]: events of 0 variant(s) found, nothing to compare", 1),
     (["ab", "--control", "[/b]"], "control '[/b]' has no events; variants seen: a, b", 2)],
    ids=["name", "control"],
)  # fmt: skip
def test_an_experiment_or_control_named_like_markup_is_said_as_typed(
    nothing_listens: Settings, tmp_path: Path, args: list[str], says: str, code: int
):
    """The name and the control went into Rich markup as typed: '[/x]' ended in a MarkupError traceback."""
    path = tmp_path / "events.jsonl"
    path.write_text("".join(
        f'{{"type":"view","user_id":"u{arm}","item_id":"i1","ts":1700000000000,"variant":"ab:{arm}"}}\n' for arm in "ab"
    ))  # fmt: skip
    done = cli(nothing_listens, "experiment", "report", *args, "--file", str(path))
    assert (done.returncode, done.stderr) == (code, says + "\n")


def test_an_experiment_report_from_a_file_names_the_lines_it_did_not_count(nothing_listens: Settings, tmp_path: Path):
    """Refused lines (a time in seconds, say) were left out of the counts without a word."""
    path = tmp_path / "events.jsonl"
    lines = [
        f'{{"type":"{kind}","user_id":"u{k}","item_id":"i1","ts":1700000000000,"variant":"ab:{arm}"}}'
        for k, (kind, arm) in enumerate([("view", "a"), ("click", "a"), ("view", "b"), ("view", "b")])
    ]
    lines.insert(2, '{"type":"view","user_id":"u9","item_id":"i1","ts":1700000000,"variant":"ab:b"}')
    path.write_text("\n".join(lines) + "\n")
    done = cli(nothing_listens, "experiment", "report", "ab", "--file", str(path))
    said = " ".join(done.stderr.split())
    assert done.returncode == 0, done.stderr
    assert "skipped line 3: ts: Input should be greater than or equal to 631152000000" in said, done.stderr


@pytest.mark.parametrize("root", ["file", "file/models"])
def test_train_with_a_model_folder_it_cannot_write_is_one_line_naming_it_before_the_log_is_read(
    nothing_listens: Settings, tmp_path: Path, root: str
):
    """RECSTREAM_MODEL_DIR a file, or under one: the whole log was read and the model trained, then write_model's
    FileExistsError or NotADirectoryError traceback. Now it is said first: the closed Kafka port is never met."""
    (tmp_path / "file").write_text("")
    done = cli(nothing_listens.replace(model_dir=tmp_path / root), "train")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"cannot write models (RECSTREAM_MODEL_DIR): {tmp_path / 'file'} is not a folder\n"


@pytest.mark.integration
def test_train_whose_fit_diverges_is_one_line_saying_what_to_lower(isolated_settings: Settings, tmp_path: Path):
    """Ratings of a million stars at the largest weight and alpha the settings take: implicit's float32 fit meets NaN,
    which was ModelFitError's traceback after the whole log was read (the bounds of --alpha, --regularization and the
    feedback types keep one event's confidence finite, not a sum of them in float32)."""
    events = tmp_path / "events.jsonl"
    stream = itertools.islice(World(WorldConfig(seed=1)).events(), 3000)
    rated = ({**e, "type": "rating", "value": MAX_VALUE} if e.get("type") == "click" else e for e in stream)
    events.write_bytes(b"\n".join(map(orjson.dumps, rated)))
    heavy = {"view": {"role": "impression", "weight": 1, "ctr": True},
             "click": {"role": "positive", "weight": 1, "ctr": True},
             "rating": {"role": "positive", "weight": MAX_WEIGHT, "value_range": [1, MAX_VALUE]}}  # fmt: skip
    settings = isolated_settings.replace(model_dir=tmp_path / "models", feedback_types=heavy)
    alpha = ["--alpha", "10000"]
    done = cli(
        settings, "train", "--file", str(events), "--factors", "4", "--iterations", "2", "--holdout", "0", *alpha
    )
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr.startswith(
        "the fit diverged (NaN encountered in factors) with regularization 40 and alpha 10000: "
    ), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())


@pytest.mark.integration
@pytest.mark.parametrize(
    ("command", "variable"),
    [(["rebuild"], "events_topic"), (["rebuild"], "users_topic"), (["train"], "events_topic"),
     (["train"], "items_topic"), (["experiment", "report", "ab"], "events_topic")],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)  # fmt: skip
def test_a_topic_the_brokers_do_not_have_is_one_line_naming_it_and_its_variable_and_nothing_is_deleted(
    isolated_settings: Settings, tmp_path: Path, command: list[str], variable: str
):
    """RECSTREAM_EVENTS_TOPIC mistyped: whole_topic read the missing topic as an empty one, so ``rebuild`` deleted
    every derived key, replayed nothing and exited 0, and ``train`` hung (stopping a consumer assigned nothing)."""
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    settings = isolated_settings.replace(model_dir=tmp_path / "models", **{variable: missing})
    client = redis.Redis.from_url(settings.redis.url)
    client.hset(Keys.of(settings)("totals"), "views", 7)  # derived: deleted by a rebuild that runs
    done = cli(settings, *command)
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr == (
        f"topic {missing!r} does not exist on Kafka at {settings.kafka.bootstrap} (RECSTREAM_{variable.upper()}): "
        "check the name, or create the topics with `recstream infra topics`\n"
    )
    assert client.hget(Keys.of(settings)("totals"), "views") == b"7"


@pytest.mark.integration
def test_topics_the_brokers_refuse_to_create_are_one_line_naming_them(services: Settings):
    """Two replicas of every topic on the session's one broker: the brokers answer InvalidReplicationFactor for each,
    which aiokafka returns without raising, and ``recstream infra topics`` said "topics created" for topics that did
    not exist (every later command then met a missing topic)."""
    settings = services.on_topics(uuid.uuid4().hex[:8], replication_factor=2)
    done = cli(settings, "infra", "topics")
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"Kafka at {settings.kafka.bootstrap} refused to create 5 topic(s): "), done.stderr
    assert f"{settings.kafka.events_topic}: " in done.stderr and "replication factor" in done.stderr.lower()
