"""One typed settings object, read once at startup from ``RECSTREAM_*`` variables.

Every process (infra, producer, worker, reader, trainer) builds a :class:`Settings` once
and passes it down; nothing else reads the environment. A bad value fails fast with the
variable's name, e.g. ``RECSTREAM_EVENTS_PARTITIONS: Input should be greater than 0``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "RECSTREAM_"


class SettingsError(ValueError):
    """Raised with one line per invalid variable, each naming the variable."""


class Settings(BaseSettings):
    """Where the services are, what the topics are called, where models live."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="host:port of a Kafka broker")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or rediss:// (TLS) URL")

    events_topic: str = "events"
    items_topic: str = "items"
    users_topic: str = "users"
    dlq_topic: str = "events-dlq"
    events_partitions: int = Field(4, gt=0, le=1024)
    items_partitions: int = Field(1, gt=0, le=1024)
    users_partitions: int = Field(4, gt=0, le=1024)
    dlq_partitions: int = Field(1, gt=0, le=1024)
    replication_factor: int = Field(1, gt=0, le=16)
    retention_ms: int = Field(
        -1, ge=-1, description="events topic retention; -1 keeps the log forever (it is the source of truth)"
    )

    model_dir: Path = Path("models-store")
    run_dir: Path = Field(Path(".run"), description="pid files, logs and data of locally started services")
    cache_dir: Path = Field(Path(".cache"), description="downloaded Kafka jars")

    producer_batch_events: int = Field(100, gt=0, le=10_000, description="events per Kafka message")
    producer_linger_ms: int = Field(5, ge=0, le=10_000)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for part in value.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got scheme {parts.scheme!r}")
        return value

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_bootstrap.split(",")[0].rpartition(":")[2])

    @property
    def redis_port(self) -> int:
        return urlsplit(self.redis_url).port or 6379


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment (and explicit overrides, for tests and CLIs).

    >>> load_settings(events_partitions=8).events_partitions
    8
    >>> load_settings(events_partitions=0)
    Traceback (most recent call last):
    ...
    recstream.settings.SettingsError: RECSTREAM_EVENTS_PARTITIONS: Input should be greater than 0
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [
            f"{ENV_PREFIX}{str(err['loc'][0]).upper()}: {err['msg']}" if err["loc"] else err["msg"]
            for err in exc.errors()
        ]
        raise SettingsError("\n".join(lines)) from None
