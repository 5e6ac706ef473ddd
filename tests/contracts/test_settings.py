from __future__ import annotations

import pytest

from recstream.contracts.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RECSTREAM_EVENTS_PARTITIONS", "0", "greater than 0"),
        ("RECSTREAM_EVENTS_PARTITIONS", "four", "valid integer"),
        ("RECSTREAM_KAFKA_BOOTSTRAP", "localhost", "host:port"),
        ("RECSTREAM_REDIS_URL", "http://x:1", "redis://"),
    ],
)
def test_invalid_variable_is_named(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert variable in str(err.value) and message in str(err.value)


def test_environment_is_read(monkeypatch):
    monkeypatch.setenv("RECSTREAM_KAFKA_BOOTSTRAP", "10.0.0.1:9999")
    monkeypatch.setenv("RECSTREAM_REDIS_URL", "rediss://:secret@cache:6380/2")
    settings = load_settings()
    assert settings.kafka_port == 9999 and settings.redis_port == 6380
