from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from redis.asyncio.connection import parse_url

from recstream.contracts.blend_settings import RANKER_STALE_MIN_S
from recstream.contracts.settings import (
    SECTIONS,
    SESSION_TTL_MAX_S,
    TOOL_VARIABLES,
    VARIABLES,
    YEAR_S,
    SettingsError,
    load_settings,
)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RECSTREAM_EVENTS_PARTITIONS", "0", "greater than 0"),
        ("RECSTREAM_EVENTS_PARTITIONS", "four", "valid integer"),
        ("RECSTREAM_KAFKA_BOOTSTRAP", "localhost", "host:port"),
        ("RECSTREAM_REDIS_URL", "http://x:1", "redis://"),
        ("RECSTREAM_SPARK_DRIVER_MEMORY", "2GB", "should match pattern"),
        ("RECSTREAM_SPARK_DRIVER_MEMORY", "0g", "should match pattern"),
        ("RECSTREAM_RANKER_ALPHA", "0", "greater than 0"),
        ("RECSTREAM_RANKER_L2", "nan", "finite number"),
        ("RECSTREAM_RANKER_PRIOR_CTR", "-0.1", "greater than or equal to 0"),
        ("RECSTREAM_RANKER_PRIOR_CTR", "10.1", "less than or equal to 10"),
        ("RECSTREAM_RANKER_BIAS_ALPHA", "0", "greater than 0"),
        ("RECSTREAM_RANKER_STANDARDIZE", "maybe", "valid boolean"),
        ("RECSTREAM_READER_HOST", "", "should match pattern"),  # an empty host binds every interface
        ("RECSTREAM_WORKER_METRICS_HOST", "a b", "should match pattern"),
        ("RECSTREAM_REDIS_URL", "redis://127.0.0.1:65536/0", "Port out of range"),
        ("RECSTREAM_REDIS_URL", "redis://127.0.0.1:0/0", "port 0"),
        ("RECSTREAM_API_KEY", "", "empty key"),
        ("RECSTREAM_EVENTS_TOPIC", "", "should match pattern"),
        ("RECSTREAM_DLQ_TOPIC", "a b/c", "should match pattern"),
        ("RECSTREAM_SSL_CAFILE", "/nonexistent/ca.pem", "does not point to a file"),  # once a bare FileNotFoundError
        ("RECSTREAM_SSL_CAFILE", "/", "does not point to a file"),  # at the first Kafka client, naming nothing
        ("RECSTREAM_SSL_CERTFILE", "/nonexistent/client.pem", "does not point to a file"),
        ("RECSTREAM_SSL_KEYFILE", "/nonexistent/client.key", "does not point to a file"),
    ],
)
def test_invalid_variable_is_named(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert variable in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("offset", [-0.001, 0.0, 0.001])
def test_the_ranker_is_stale_no_sooner_than_a_healthy_reader_s_weights_age(monkeypatch, offset):
    """A staleness under the reloads' own cadence (1 s apart, each up to 2 s) sent pages to the fixed blend for part
    of every cycle while every reload succeeded (0.1 s: 81% of pages)."""
    monkeypatch.setenv("RECSTREAM_RANKER_STALE_S", str(RANKER_STALE_MIN_S + offset))
    if offset < 0:
        with pytest.raises(SettingsError, match="RECSTREAM_RANKER_STALE_S"):
            load_settings()
    else:
        assert load_settings().blend.ranker_stale_s == RANKER_STALE_MIN_S + offset


def test_standardize_and_a_prior_are_refused_together(monkeypatch):
    monkeypatch.setenv("RECSTREAM_RANKER_STANDARDIZE", "true")
    assert load_settings().ranker.standardize
    monkeypatch.setenv("RECSTREAM_RANKER_PRIOR_CTR", "1")
    with pytest.raises(SettingsError, match="do not combine"):
        load_settings()


@pytest.mark.parametrize(
    ("standardize", "names", "error"),
    [("true", "als_rank,pool_age", None), ("false", "als_rank,pool_age", None),
     ("true", "als_rank,age", "not features: age")],
)  # fmt: skip
def test_the_features_to_standardize_are_feature_names(monkeypatch, standardize, names, error):
    monkeypatch.setenv("RECSTREAM_RANKER_STANDARDIZE", standardize)
    monkeypatch.setenv("RECSTREAM_RANKER_STANDARDIZE_FEATURES", names)
    if error is None:
        assert load_settings().ranker.standardize_features == ("als_rank", "pool_age")
    else:
        with pytest.raises(SettingsError, match=error):
            load_settings()


def test_the_default_ranker_standardizes_the_taste_features_and_a_prior_needs_it_off(monkeypatch):
    ranker = load_settings().ranker
    assert ranker.standardize
    assert ranker.standardize_features == ("als_rank", "batch_rank", "category_affinity", "category_lift")
    monkeypatch.setenv("RECSTREAM_RANKER_PRIOR_CTR", "1")
    with pytest.raises(SettingsError, match="do not combine"):
        load_settings()
    monkeypatch.setenv("RECSTREAM_RANKER_STANDARDIZE", "false")
    assert load_settings().ranker.prior_ctr == 1.0


def test_environment_is_read(monkeypatch):
    monkeypatch.setenv("RECSTREAM_KAFKA_BOOTSTRAP", "10.0.0.1:9999")
    monkeypatch.setenv("RECSTREAM_REDIS_URL", "rediss://:secret@cache:6380/2")
    settings = load_settings()
    assert settings.kafka.port == 9999 and settings.redis.port == 6380


def test_every_variable_lands_in_its_section_and_round_trips_through_the_environment(monkeypatch):
    """Flat variable names stay valid: each sets exactly one field of one section, and to_env gives them back."""
    settings = load_settings(batch_max=123, reader_port=9000, share_popular=0.3, redis_prefix="x", model_dir="m")
    assert (settings.worker.batch_max, settings.reader.port, settings.blend.share_popular) == (123, 9000, 0.3)
    assert (settings.redis.prefix, str(settings.model.dir)) == ("x", "m")
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings
    assert len(VARIABLES) == len(set(VARIABLES.values()))


def test_a_misspelled_variable_is_reported_once_with_the_closest_name(monkeypatch, caplog):
    monkeypatch.setenv("RECSTREAM_BATCH_MAXX", "10")
    with caplog.at_level("WARNING"):
        settings = load_settings()
        load_settings()  # a process that builds its settings again (a CLI's error path) does not repeat it
    assert settings.worker.batch_max == 5_000
    assert caplog.text.count("RECSTREAM_BATCH_MAXX") == 1 and "did you mean RECSTREAM_BATCH_MAX?" in caplog.text


def test_the_dev_scripts_own_variables_are_not_reported_as_unknown_settings(monkeypatch, caplog):
    """./dev test passes RECSTREAM_SKIP_AUDIT / RECSTREAM_REQUIRE_AUDIT on to every process it starts."""
    for name in TOOL_VARIABLES:
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("RECSTREAM_SKIP_AUDITT", "1")
    with caplog.at_level("WARNING"):
        load_settings()
    assert not any(f"{name} is not" in caplog.text for name in TOOL_VARIABLES)
    assert "RECSTREAM_SKIP_AUDITT is not a recstream setting" in caplog.text
    assert set(TOOL_VARIABLES) <= set(re.findall(r"RECSTREAM_[A-Z_]+", (Path(__file__).parents[2] / "dev").read_text()))


def test_an_unknown_override_fails_naming_it():
    with pytest.raises(SettingsError, match="RECSTREAM_BACH_MAX: no such setting"):
        load_settings(bach_max=1)


def test_replace_validates_like_the_environment():
    with pytest.raises(SettingsError, match="RECSTREAM_BATCH_MAX: Input should be greater than 0"):
        load_settings().replace(batch_max=0)


def test_replace_keeps_what_the_user_set_apart_from_the_defaults():
    """A section's model_fields_set says what the user set (the demo keeps a port set to its default's value): a
    replace marked every field of every section set, so after the CLI's own changes nothing looked defaulted."""
    settings = load_settings(reader_port=8080).replace(batch_max=3)
    assert settings.reader.model_fields_set == {"port"}
    assert settings.worker.model_fields_set == {"batch_max"}
    assert not settings.redis.model_fields_set
    assert (settings.reader.port, settings.worker.batch_max) == (8080, 3)


def test_the_redis_password_never_shows_in_the_repr():
    settings = load_settings(redis_url="redis://:hunter2@cache:6379/0")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


def test_model_copy_with_flat_names_is_refused_not_silently_ignored():
    """pydantic's model_copy(update=...) would set ``batch_max`` as a stray attribute while
    ``settings.worker.batch_max`` kept its old value: a test once stopped the session's services that way."""
    with pytest.raises(TypeError, match=r"use settings\.replace"):
        load_settings().model_copy(update={"batch_max": 1})


BOUNDED = {  # flat name → (section, field, the values around both ends of its range)
    "reader_workers": ("reader", "workers", [0, 1, 2, 63, 64, 65]),
    "batch_max_events": ("worker", "batch_max_events", [0, 1, 2, 999_999, 1_000_000, 1_000_001]),
    "batch_script_target_s": ("worker", "batch_script_target_s", [0.0, 1e-3, 2.49, 2.5, 2.51]),
    "segment_rank_s": ("worker", "segment_rank_s", [-1e-3, 0.0, 1e-3, 59.9, 60.0, 60.01]),
    "pool_read_max": ("pool", "read_max", [0, 1, 2, 999_999, 1_000_000, 1_000_001]),
    "pool_explore_max": ("pool", "explore_max", [0, 1, 2, 999_999, 1_000_000, 1_000_001]),
    "model_keep": ("model", "keep", [1, 2, 3, 9_999, 10_000, 10_001]),  # 2: the version a publish replaced too
    "batch_candidates_m": ("model", "batch_candidates_m", [0, 1, 2, 999, 1_000, 1_001]),
    "seen_cap": ("worker", "seen_cap", [0, 1, 2, 99_999, 100_000, 100_001]),
    # each accepted at start, then every batch refused or failed forever (the batch script needs ms below 2^53,
    # orjson an int64), or every page degraded with its session list left without expiry (Redis' EXPIRE limit)
    "trend_half_life_s": ("model", "trend_half_life_s", [0, 1, 2, YEAR_S - 1, YEAR_S, YEAR_S + 1]),
    "pool_graduate_age_s": ("pool", "graduate_age_s", [0, 1, 2, YEAR_S - 1, YEAR_S, YEAR_S + 1]),
    "pool_graduate_views": ("pool", "graduate_views", [0, 1, 2, 10**9 - 1, 10**9, 10**9 + 1]),
    "pool_graduate_standing_events": ("pool", "graduate_standing_events", [0, 1, 2, 10**9 - 1, 10**9, 10**9 + 1]),
    "session_ttl_s": ("reader", "session_ttl_s", [0, 1, 2, SESSION_TTL_MAX_S - 1, SESSION_TTL_MAX_S,
                                                  SESSION_TTL_MAX_S + 1]),
    "retention_ms": ("kafka", "retention_ms", [-2, -1, 0, 2**63 - 2, 2**63 - 1, 2**63]),  # the broker's Java long
}  # fmt: skip
"""The lowest and highest value of each are valid, the ones just outside are not."""


@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name, (_, _, values) in BOUNDED.items() for value in values]
)
def test_bounded_settings_accept_their_range_and_name_the_variable_outside_it(name, value):
    section, attr, values = BOUNDED[name]
    if value in (values[0], values[-1]):
        with pytest.raises(SettingsError, match=f"RECSTREAM_{name.upper()}"):
            load_settings(**{name: value})
    else:
        assert getattr(getattr(load_settings(**{name: value}), section), attr) == value


FLOAT_VARIABLES = sorted(
    variable
    for variable, (section, field) in VARIABLES.items()
    if SECTIONS[section].model_fields[field].annotation in (float, float | None)
)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("name", FLOAT_VARIABLES)
def test_no_float_setting_takes_infinity_or_nan(name, value):
    """An infinite prior mass made every smoothed CTR NaN; no setting means infinity."""
    with pytest.raises(SettingsError, match=f"RECSTREAM_{name.upper()}: Input should be a finite number"):
        load_settings(**{name: value})


def test_the_float_settings_are_found():
    assert {"ctr_prior_mass", "bandit_prior_mass", "share_popular"} <= set(FLOAT_VARIABLES)


def test_the_redis_url_accepts_the_last_port_and_a_socket():
    assert load_settings(redis_url="redis://127.0.0.1:65535/0").redis.port == 65535
    assert load_settings(redis_url="unix:///tmp/redis.sock").redis.url == "unix:///tmp/redis.sock"


@pytest.mark.parametrize("length", [248, 249, 250])
@pytest.mark.parametrize("name", ["events_topic", "items_topic", "users_topic", "dlq_topic", "erasures_topic"])
def test_a_topic_name_has_at_most_the_249_characters_kafka_takes(name, length):
    if length > 249:
        with pytest.raises(SettingsError, match=f"RECSTREAM_{name.upper()}: String should match pattern"):
            load_settings(**{name: "t" * length})
    else:
        assert getattr(load_settings(**{name: "t" * length}).kafka, name) == "t" * length


def test_a_child_reads_a_setting_held_as_none_as_unset_not_as_the_parents_variable(monkeypatch):
    """to_env leaves None out, so a child started with {**os.environ, **to_env()} read the parent's variable: a
    reader meant to run without an API key, an experiment or a bias α ran with the parent's."""
    parent = {"RECSTREAM_API_KEY": "k" * 32, "RECSTREAM_RANKER_BIAS_ALPHA": "0.5", "RECSTREAM_SKIP_AUDIT": "1"}
    for name, value in parent.items():
        monkeypatch.setenv(name, value)
    settings = load_settings().replace(api_key=None, ranker_bias_alpha=None)
    child = settings.environment(os.environ)
    assert "RECSTREAM_API_KEY" not in child and "RECSTREAM_RANKER_BIAS_ALPHA" not in child
    assert child["RECSTREAM_SKIP_AUDIT"] == "1", "the project's tool variables pass through"
    for name in parent:
        monkeypatch.delenv(name)
    for name, value in child.items():
        monkeypatch.setenv(name, value)
    seen = load_settings()
    assert seen.reader.api_key is None and seen.ranker.bias_alpha is None


@pytest.mark.parametrize(
    ("key", "says"),
    [("s3cret\n", "leading or trailing whitespace"), (" s3cret", "leading or trailing whitespace"),
     ("s3cret\t", "leading or trailing whitespace"), ("s3cré", "character 5 cannot go in an HTTP header"),
     ("s3\ncret", "character 3 cannot go in an HTTP header"), ("s3cr\x7ft", "character 5 cannot go in an HTTP header")],
)  # fmt: skip
def test_an_api_key_no_request_can_send_is_refused_without_saying_it(monkeypatch, key: str, says: str):
    """Accepted (only an empty key was refused), then every write answered 401: the reader's server strips a
    header's surrounding whitespace and reads its bytes as Latin-1, and the client refuses to send such a key."""
    monkeypatch.setenv("RECSTREAM_API_KEY", key)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert str(err.value).startswith("RECSTREAM_API_KEY: ") and says in str(err.value), str(err.value)
    assert "every write would answer 401" in str(err.value) and "s3" not in str(err.value)


@pytest.mark.parametrize("key", ["s3cret", "s3 cr\tet", "~!@#$%^&*()_+`-={}[]|:;'<>,.?/"])
def test_an_api_key_of_printable_ascii_with_inner_spaces_is_taken(key: str):
    assert load_settings(api_key=key).reader.api_key.get_secret_value() == key


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/abc", "redis://127.0.0.1:6379/1x", "redis://127.0.0.1:6379/-1",
     "redis://127.0.0.1:6379/+1", "redis://127.0.0.1:6379/1_0", "redis://127.0.0.1:6379/%201",
     "redis://127.0.0.1:6379/1/2", "redis://127.0.0.1:6379/\u0663", "redis://127.0.0.1:6379/0?db=abc",
     "unix:///tmp/redis.sock?db=x"],
)  # fmt: skip
def test_a_redis_database_that_is_not_a_non_negative_integer_is_refused_naming_the_url(url: str):
    """redis-py used database 0 for ``/abc`` or ``/1x`` without a word (its int() takes ``+1`` and ``1_0``, ``/1/2``
    as 12), and raised at the first connection for ``?db=abc``."""
    with pytest.raises(SettingsError, match=r"RECSTREAM_REDIS_URL: .*the database must be a non-negative integer"):
        load_settings(redis_url=url)


@pytest.mark.parametrize(
    ("url", "database"),
    [("redis://127.0.0.1:6379", 0), ("redis://127.0.0.1:6379/", 0), ("redis://127.0.0.1:6379/0", 0),
     ("redis://127.0.0.1:6379/15", 15), ("redis://127.0.0.1:6379/99", 99), ("rediss://:pw@cache:6380/2?db=3", 3),
     ("unix:///tmp/redis.sock", 0), ("unix:///tmp/redis.sock?db=4", 4), ("redis://127.0.0.1:6379/3/", 3),
     ("redis://127.0.0.1:6379/%31", 1), ("redis://127.0.0.1:6379/2?db=", 2), ("redis://127.0.0.1:6379?db=", 0)],
)  # fmt: skip
def test_a_redis_database_is_the_one_redis_py_selects(url: str, database: int):
    """99 is taken: whether a Redis has that many databases is its own setting, asked at the first connection
    (tests/shell/test_cli_errors.py). A trailing slash, a percent-encoded digit and an empty ``?db=`` were refused
    though redis-py reads them."""
    assert load_settings(redis_url=url).redis.database == parse_url(url).get("db", 0) == database


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/1", "redis://127.0.0.1:6379/0?db=1"])
def test_a_redis_cluster_refuses_any_database_but_0_however_the_url_names_it(url: str):
    with pytest.raises(SettingsError, match="RECSTREAM_REDIS_CLUSTER needs a redis:// or rediss:// URL on database 0"):
        load_settings(redis_url=url, redis_cluster=True)
    assert load_settings(redis_url="redis://127.0.0.1:6379/0?db=0", redis_cluster=True).redis.database == 0
