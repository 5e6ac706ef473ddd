"""One typed settings object, read once at startup from ``RECSTREAM_*`` variables.

Every process (infra, producer, worker, reader, trainer) builds a :class:`Settings` once
and passes it down; nothing else reads the environment. A bad value fails fast with the
variable's name, e.g. ``RECSTREAM_EVENTS_PARTITIONS: Input should be greater than 0``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from recstream.contracts.experiments import Experiment

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

    redis_prefix: str = Field("rs", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="prefix of every Redis key")

    # stream workers
    worker_group: str = Field("recstream-worker", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="consumer group")
    batch_max: int = Field(5_000, gt=0, le=100_000, description="Kafka messages per processed batch, at most")
    batch_wait_s: float = Field(0.01, gt=0, le=10, description="how long a batch waits to fill")
    fetch_max_wait_ms: int = Field(50, gt=0, le=10_000, description="longest the broker holds a consumer's fetch")
    fetch_min_bytes: int = Field(16_384, gt=0, le=1 << 24, description="bytes a fetch waits for, at most that long")
    worker_session_timeout_s: float = Field(
        10.0, ge=6, le=300, description="a worker silent this long leaves the group: a crashed one's partitions wait"
    )
    worker_metrics_port: int = Field(
        9101, ge=0, lt=65536, description="a worker's Prometheus /metrics and liveness /healthz (0: any)"
    )
    worker_stall_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="/healthz turns 503 when an agent spent this long in one batch without an attempt ending "
        "(applied or retried); a restarted worker's first batch also waits for the items topic here",
    )
    dedup_window_s: int = Field(
        300,
        ge=0,
        le=7 * 86_400,
        description="an event whose user sent its event_id at most this long before (arrival time) is dropped; "
        "Redis keeps every id that long, ~100 bytes each: events/s × window × 100 B (0: no de-duplication)",
    )
    history_cache_users: int = Field(200_000, ge=0, description="histories a worker keeps in memory")
    history_cap: int = Field(
        10, gt=0, le=10_000, description="recent items in a user's history for the user step (10 won bench/prequential)"
    )
    candidates_m: int = Field(50, gt=0, le=1_000, description="personal candidates kept per user")
    seen_cap: int = Field(500, gt=0, le=100_000, description="items kept in a user's seen set")
    # smoothed CTR: (clicks + m·p) / (views + m) with p the quantized global CTR
    ctr_prior_mass: float = Field(20.0, gt=0, description="m: how many views the prior is worth")
    ctr_default: float = Field(0.05, gt=0, lt=1, description="global CTR assumed before any data")
    ctr_default_mass: float = Field(100.0, gt=0, description="views the default global CTR is worth")
    ctr_prior_step: float = Field(0.005, gt=0, le=0.5, description="relative grid step of the quantized prior")
    trend_half_life_s: int = Field(6 * 3600, gt=0, description="half-life of the trending counts")
    trend_epoch_half_lives: int = Field(8, gt=0, le=16, description="trend key rotation, in half-lives")
    # new-item pool (Thompson sampling)
    pool_graduate_views: int = Field(200, gt=0, description="an item leaves the pool after this many views")
    pool_graduate_age_s: int = Field(48 * 3600, gt=0, description="... or when it is this old (event time)")
    bandit_prior_mass: float = Field(10.0, gt=0, description="pseudo-views of the Beta prior from the global CTR")
    fold_in_users: int = Field(
        1_000, gt=0, le=100_000, description="users kept per new item for its fold-in at graduation (the first ones)"
    )

    # the reader (serving/)
    reader_host: str = Field("127.0.0.1", description="interface the reader binds to")
    reader_port: int = Field(8080, gt=0, lt=65536)
    reader_redis_timeout_s: float = Field(0.05, gt=0, le=5, description="past this, answer degraded")
    feed_max_limit: int = Field(100, gt=0, le=1000, description="largest page a client may ask for")
    share_personal: float = Field(0.6, ge=0, le=1, description="slot share of personal candidates (warm users)")
    share_popular: float = Field(0.2, ge=0, le=1, description="slot share of popular-in-segment items")
    share_explore: float = Field(0.1, ge=0, le=1, description="slot share of explored new items")
    share_fresh: float = Field(0.1, ge=0, le=1, description="slot share of fresh items in favourite categories")
    popular_personal_head: int = Field(
        50,
        ge=0,
        le=500,
        description="warm users: of the segment's first N popular items, those on their candidate "
        "list first, in its order (0: smoothed CTR order alone; serving/blend.personal_first)",
    )
    explore_max_share: float = Field(0.25, ge=0, le=1, description="cap on explore slots, whatever the config")
    explore_policy: Literal["thompson", "epsilon_greedy", "none"] = "thompson"
    explore_epsilon: float = Field(0.1, ge=0, le=1)
    cold_segment_weight: float = Field(0.7, ge=0, le=1, description="λ in λ·P(i|segment) + (1−λ)·P(i|global)")
    session_ttl_s: int = Field(1800, gt=0, description="how long an infinite-scroll cursor lives")
    pool_cache_s: float = Field(0.5, ge=0, le=60, description="in-process cache of the bandit pool")
    popular_refresh_s: float = Field(1.0, gt=0, le=300, description="refresh of the degraded-mode popular list")
    api_key: SecretStr | None = Field(None, description="protects write and admin routes when set")
    protect_reads: bool = Field(False, description="read routes also need the API key")
    experiment: Experiment | None = Field(
        None, description="the running A/B test, as JSON: name, salt, variants with weights and blend overrides"
    )

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

    def on_topics(self, suffix: str, **more: object) -> Settings:
        """These settings on topics of their own (``events-<suffix>``, …) plus ``more``: a test or benchmark
        run that shares a broker with others and must not read their events."""
        topics = {f"{name}_topic": f"{name}-{suffix}" for name in ("events", "items", "users")}
        return self.model_copy(update={**topics, "dlq_topic": f"events-dlq-{suffix}", **more})

    def __repr_args__(self) -> Iterator[tuple[str | None, object]]:
        """What repr() and str() show: the Redis URL without its password (SecretStr fields print as stars)."""
        for name, value in super().__repr_args__():
            yield name, redacted(value) if name == "redis_url" else value

    def to_env(self) -> dict[str, str]:
        """These settings as ``RECSTREAM_*`` variables, to start a child process with the same view."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        return {f"{ENV_PREFIX}{name.upper()}": _env_value(value) for name, value in values.items() if value is not None}

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_bootstrap.split(",")[0].rpartition(":")[2])

    @property
    def redis_port(self) -> int:
        return urlsplit(self.redis_url).port or 6379


def _env_value(value: object) -> str:
    """How a variable spells the value: secrets revealed, nested models as JSON (what the parser reads back)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value.model_dump_json(exclude_none=True) if isinstance(value, BaseModel) else str(value)


def _variable(loc: tuple[int | str, ...]) -> str:
    """The variable, and where inside its JSON value for a nested one: ``RECSTREAM_EXPERIMENT (variants.1.weight)``."""
    inside = f" ({'.'.join(map(str, loc[1:]))})" if len(loc) > 1 else ""
    return f"{ENV_PREFIX}{str(loc[0]).upper()}{inside}"


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``: what logs and reprs may show.

    >>> redacted("rediss://app:s3cret@redis.internal:6380/0")
    'rediss://app:***@redis.internal:6380/0'
    >>> redacted("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/0'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment (and explicit overrides, for tests and CLIs).

    >>> load_settings(events_partitions=8).events_partitions
    8
    >>> load_settings(events_partitions=0)
    Traceback (most recent call last):
    ...
    recstream.contracts.settings.SettingsError: RECSTREAM_EVENTS_PARTITIONS: Input should be greater than 0
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [f"{_variable(err['loc'])}: {err['msg']}" if err["loc"] else err["msg"] for err in exc.errors()]
        raise SettingsError("\n".join(lines)) from None
