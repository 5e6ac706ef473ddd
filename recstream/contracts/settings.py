"""One typed settings object in sections, read once at startup from ``RECSTREAM_*`` variables.

Every process (infra, producer, worker, reader, trainer) builds a :class:`Settings` once and
passes down the section a part needs (``settings.kafka``, ``settings.blend``, …); nothing else
reads the environment. The variables keep their flat names (``RECSTREAM_BATCH_MAX`` sets
``settings.worker.batch_max``; :data:`VARIABLES` maps every one). A bad value fails fast with the
variable's name, e.g. ``RECSTREAM_EVENTS_PARTITIONS: Input should be greater than 0`` (or with the name of the
command-line option that gave the value, ``--workers: ...``); an unknown ``RECSTREAM_*`` variable is reported with
the closest valid name.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit, urlunsplit

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from recstream.contracts.blend_settings import BlendSettings
from recstream.contracts.experiments import Experiment
from recstream.contracts.feedback import DEFAULT_FEEDBACK, FeedbackTypes
from recstream.contracts.headers import header_value
from recstream.contracts.ranking import FEATURES
from recstream.contracts.section import Section

ENV_PREFIX = "RECSTREAM_"
log = logging.getLogger(__name__)


def variable(name: str) -> str:
    """The environment variable of a setting's flat name (:data:`VARIABLES`' keys).

    >>> variable("events_partitions")
    'RECSTREAM_EVENTS_PARTITIONS'
    """
    return f"{ENV_PREFIX}{name.upper()}"


TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"  # what Kafka accepts as a topic name
HOST_PATTERN = r"^[A-Za-z0-9_.:\[\]-]+$"  # a name or an address; empty would bind every interface
YEAR_S = 365 * 86_400
"""The longest trend half-life and pool graduation age: a count that takes longer to fade trends nothing, an item
older is not new. Far inside what the batch script holds: it needs each in ms (×1000, and the trend keys' TTL of
3 × half-life × up to 16 epochs, ~1.5·10^12 ms) as an integer below 2^53, exact in Lua's doubles and taken whole by
EXPIRE; past that every batch was refused, forever (``cfg.trend_ttl_s in ms is ...``)."""
SESSION_TTL_MAX_S = 7 * 86_400
"""The longest a scroll session lives after its last page: a cursor a week old continues nothing its reader
remembers. Redis refuses an EXPIRE whose time in ms past now leaves 64 bits; the session list, written just
before, then stayed without expiry and out of every index (never evicted), and every page answered degraded."""


class SettingsError(ValueError):
    """Raised with one line per invalid variable, each naming the variable."""


class KafkaSettings(Section):
    """The brokers, the topics (names, and partitions and retention at creation) and the producer."""

    variables: ClassVar[Mapping[str, str]] = {"bootstrap": "kafka_bootstrap"}

    bootstrap: str = Field("127.0.0.1:9092", description="host:port[,host:port...] of the brokers")
    events_topic: str = Field("events", pattern=TOPIC_PATTERN, description="view/click events, keyed by user id")
    items_topic: str = Field("items", pattern=TOPIC_PATTERN, description="the catalogue (compacted)")
    users_topic: str = Field("users", pattern=TOPIC_PATTERN, description="user attributes (compacted)")
    dlq_topic: str = Field("events-dlq", pattern=TOPIC_PATTERN, description="bad input, each with its reason")
    erasures_topic: str = Field(
        "erasures",
        pattern=TOPIC_PATTERN,
        description="erased user ids (compacted, one partition): rebuild and train drop their events",
    )
    events_partitions: int = Field(4, gt=0, le=1024, description="partitions of the events topic at creation")
    items_partitions: int = Field(1, gt=0, le=1024, description="1: every worker applies items in the same order")
    users_partitions: int = Field(4, gt=0, le=1024, description="partitions of the users topic at creation")
    dlq_partitions: int = Field(1, gt=0, le=1024, description="partitions of the dead-letter topic at creation")
    replication_factor: int = Field(1, gt=0, le=16, description="replicas of every topic at creation")
    retention_ms: int = Field(
        -1,
        ge=-1,
        le=2**63 - 1,
        description="events topic retention; -1 keeps the log forever (it is the source of truth); at most a Java "
        "long, which the broker parses it as (past it, creating the topics failed)",
    )
    producer_batch_events: int = Field(
        100, gt=0, le=10_000, description="events per Kafka message, at most (a message is also cut at 1,000,000 bytes)"
    )
    producer_linger_ms: int = Field(5, ge=0, le=10_000, description="how long the producer waits to fill a batch")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how every client (worker, producer, reader, jobs, infra) talks to the brokers"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism for SASL_PLAINTEXT / SASL_SSL"
    )
    sasl_username: str | None = Field(None, description="SASL user (needed for SASL_*)")
    sasl_password: SecretStr | None = Field(None, description="SASL password (needed for SASL_*)")
    ssl_cafile: FilePath | None = Field(
        None, description="CA file that signed the brokers' certificates (SSL, SASL_SSL)"
    )
    ssl_certfile: FilePath | None = Field(None, description="client certificate for mutual TLS (with ssl_keyfile)")
    ssl_keyfile: FilePath | None = Field(None, description="client private key for mutual TLS (with ssl_certfile)")

    @field_validator("bootstrap")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for part in value.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    @model_validator(mode="after")
    def _credentials_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_") and (self.sasl_username is None or self.sasl_password is None):
            raise ValueError(f"{self.security_protocol} needs RECSTREAM_SASL_USERNAME and RECSTREAM_SASL_PASSWORD")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("mutual TLS needs both RECSTREAM_SSL_CERTFILE and RECSTREAM_SSL_KEYFILE")
        return self

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def port(self) -> int:
        """The first broker's port."""
        return int(self.bootstrap.split(",")[0].rpartition(":")[2])


class RedisSettings(Section):
    """Where the state lives."""

    variables: ClassVar[Mapping[str, str]] = {"url": "redis_url", "prefix": "redis_prefix", "cluster": "redis_cluster"}

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="redis://, rediss:// (TLS) or unix:// URL; its database (the path, or ?db=) a non-negative "
        "integer: redis-py used database 0 for any other path without a word",
    )
    prefix: str = Field("rs", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="prefix of every Redis key")
    cluster: bool = Field(
        False,
        description="the URL names one node of a Redis Cluster: keys carry hash tags (a slot per events partition, "
        "one for shared state) and clients follow the cluster's slots (the database must be 0)",
    )

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got scheme {parts.scheme!r}")
        if parts.scheme != "unix" and parts.port == 0:  # .port itself raises ValueError outside 0-65535
            raise ValueError("port 0 names no Redis")
        database = _database(parts)
        if not database.isascii() or not database.isdigit():  # int() would take " 1", "+1" and "1_0" too
            raise ValueError(f"the database must be a non-negative integer, got {database!r}")
        return value

    @model_validator(mode="after")
    def _cluster_url(self) -> RedisSettings:
        """A cluster has no databases but 0 and no unix sockets: refuse what its client would reject later."""
        if self.cluster and (urlsplit(self.url).scheme == "unix" or self.database != 0):
            raise ValueError(
                f"RECSTREAM_REDIS_CLUSTER needs a redis:// or rediss:// URL on database 0, not {redacted(self.url)}"
            )
        return self

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 6379

    @property
    def database(self) -> int:
        """The database the URL names (``?db=``, else its path; 0 without either)."""
        return int(_database(urlsplit(self.url)))

    def __repr_args__(self) -> Iterator[tuple[str | None, object]]:
        """What repr() and str() show: the URL without its password."""
        for name, value in super().__repr_args__():
            yield name, redacted(value) if name == "url" else value


def _database(parts: SplitResult) -> str:
    """The database a Redis URL names, as redis-py reads it: a non-empty ``?db=``, else a redis:// path without its
    slashes, percent-decoded (none: 0; a unix:// path is the socket's).

    >>> [_database(urlsplit(url)) for url in ("redis://h/3/", "redis://h/%31", "redis://h/2?db=", "unix:///s?db=4")]
    ['3', '1', '2', '4']
    """
    query = parse_qs(parts.query).get("db")
    if query:
        return unquote(query[0])
    if parts.scheme == "unix":
        return "0"
    return unquote(parts.path).strip("/") or "0"


class WorkerSettings(Section):
    """A stream worker: its consumer group, its batches and what it keeps in memory."""

    variables: ClassVar[Mapping[str, str]] = {
        "group": "worker_group",
        "session_timeout_s": "worker_session_timeout_s",
        "metrics_host": "worker_metrics_host",
        "metrics_port": "worker_metrics_port",
        "stall_s": "worker_stall_s",
        "pipeline": "worker_pipeline",
    }

    group: str = Field("recstream-worker", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="consumer group")
    batch_max: int = Field(5_000, gt=0, le=100_000, description="Kafka messages per processed batch, at most")
    batch_max_events: int = Field(
        100_000, gt=0, le=1_000_000,
        description="valid records per batch script call, at most, whatever batch_script_target_s allows (a batch "
        "over the bound is applied in several calls, cut between messages; a message over it goes alone)",
    )  # fmt: skip
    batch_script_target_s: float = Field(
        0.5, gt=0, le=2.5,
        description="how long one batch script call should block Redis: each call's events are bounded by the "
        "last call's measured events/s × this (Redis answers BUSY to everyone after 5 s of one script)",
    )  # fmt: skip
    batch_wait_s: float = Field(0.01, gt=0, le=10, description="how long a batch waits to fill")
    segment_rank_s: float = Field(
        0.5, ge=0, le=60,
        description="how often a worker's batch rescores the per-segment rankings of the items touched since "
        "(O(items × segments) in the batch script; the other batches only list their items; such a call takes as "
        "many as its batch touched, at least 1,000, and the next batch ranks again at once while some wait): the "
        "reader reloads those lists every popular_refresh_s, so about twice as often is enough (0: every batch)",
    )  # fmt: skip
    pipeline: bool = Field(
        False,
        description="build the next batch while the last one's script runs in Redis, one script in flight per topic "
        "(streams/processor.py); off by default: its batches come out smaller and more, and at ×1 a call costs Redis "
        "about the same whatever its events, so bench.worker measured it slower (docs/ARCHITECTURE.md, pipelined "
        "batches)",
    )
    fetch_max_wait_ms: int = Field(50, gt=0, le=10_000, description="longest the broker holds a consumer's fetch")
    fetch_min_bytes: int = Field(16_384, gt=0, le=1 << 24, description="bytes a fetch waits for, at most that long")
    session_timeout_s: float = Field(
        10.0, ge=6, le=300, description="a worker silent this long leaves the group: a crashed one's partitions wait"
    )
    metrics_host: str = Field(
        "127.0.0.1",
        pattern=HOST_PATTERN,
        description="interface of a worker's /metrics (0.0.0.0 where Prometheus runs in another container)",
    )
    metrics_port: int = Field(
        9101, ge=0, lt=65536, description="a worker's Prometheus /metrics and liveness /healthz (0: any)"
    )
    stall_s: float = Field(
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
    seen_cap: int = Field(
        1_000,
        gt=0,
        le=100_000,
        description="items kept in a user's seen set, the reader's exclusion; ~95 bytes of Redis each. Shorter than "
        "a user's history, it lets long-consumed items back onto the page (validated on six sources: 500 cost the "
        "dense world's personal lists 3% of their HR@10, 1,000 the stable world's re-clicks on items seen 500+ "
        "events before 1%; BENCHMARKS.md)",
    )


class ModelSettings(Section):
    """What the workers compute: the user step and its candidates, smoothed CTR, trends; where models live."""

    variables: ClassVar[Mapping[str, str]] = {"dir": "model_dir", "keep": "model_keep"}

    dir: Path = Field(Path("models-store"), description="where model versions are written and read")
    keep: int = Field(
        5,
        ge=2,
        le=10_000,
        description="model versions a publish leaves in the model folder: the newest, and always the one it "
        "replaced (a worker may still be loading it); a folder serves one deployment (one Redis prefix)",
    )
    history_cap: int = Field(
        30,
        gt=0,
        le=10_000,
        description="recent items in a user's history for the user step, their weight fading by ALSConfig.recency_decay"
        " (30 with γ 0.95 and the anchor μ 10: chosen by bench/validate.py's worst case over MovieLens and the"
        " simulated worlds, 0.854 of each source's best HR@10; 10, tuned on MovieLens alone, fell to 0.55 on sparse"
        " users)",
    )
    candidates_m: int = Field(50, gt=0, le=1_000, description="personal candidates kept per user")
    batch_candidates_m: int = Field(
        100,
        gt=0,
        le=1_000,
        description="batch-list candidates kept per user the model version knows (user:<u>:bcand). The fit's vector "
        "reproduces its training events, which the worker does not exclude past the history cap and the reader only "
        "within the seen cap: for long histories most of a short list is consumed (validated: 50 → 100 raised that "
        "list's HR@10 in the dense world 0.1765 → 0.1989 and on every other source but sparse, even; BENCHMARKS.md)",
    )
    # smoothed CTR: (clicks + m·p) / (views + m) with p the quantized global CTR
    ctr_prior_mass: float = Field(20.0, gt=0, description="m: how many views the prior is worth")
    ctr_default: float = Field(0.05, gt=0, lt=1, description="global CTR assumed before any data")
    ctr_default_mass: float = Field(100.0, gt=0, description="views the default global CTR is worth")
    ctr_prior_step: float = Field(0.005, gt=0, le=0.5, description="relative grid step of the quantized prior")
    trend_half_life_s: int = Field(
        6 * 3600, gt=0, le=YEAR_S, description="half-life of the trending counts (at most a year, YEAR_S)"
    )
    trend_epoch_half_lives: int = Field(8, gt=0, le=16, description="trend key rotation, in half-lives")
    spark_master: str = Field(
        "local[2]", min_length=1, description="where `train --engine spark` runs: local[N] here, or a cluster's URL"
    )
    spark_driver_memory: str = Field(
        "2g", pattern=r"^[1-9][0-9]*[kmgt]$", description="heap of the Spark driver (`train --engine spark`), e.g. 2g"
    )
    feedback_types: FeedbackTypes = Field(
        DEFAULT_FEEDBACK,
        description="the event types (JSON: name → {role, weight, ctr, value_range}; replaces the whole default set: "
        "recstream/contracts/feedback.py); the workers, POST /v1/events, import and train accept only these",
    )
    require_announced_items: bool = Field(
        True,
        description="events for an item the items topic never announced are counted, but the item is in no feed "
        "until announced (false: it enters the pool at its first event, for systems without a catalogue feed)",
    )


class PoolSettings(Section):
    """The new-item pool: Thompson sampling's prior, graduation, and the fold-in at graduation."""

    variables: ClassVar[Mapping[str, str]] = {
        "graduate_views": "pool_graduate_views",
        "graduate_age_s": "pool_graduate_age_s",
        "graduate_standing_events": "pool_graduate_standing_events",
        "explore_max": "pool_explore_max",
        "read_max": "pool_read_max",
    }

    graduate_views: int = Field(
        200,
        gt=0,
        le=1_000_000_000,
        description="an item leaves the pool after this many views (at most a billion, past any new item's views: "
        "the batch script gets it as JSON, which orjson writes only within 64 bits, and compares it with a count "
        "held in a double, exact below 2^53; past 64 bits every batch failed to encode, forever)",
    )
    graduate_age_s: int = Field(
        48 * 3600, gt=0, le=YEAR_S, description="... or when it is this old (event time; at most a year, YEAR_S)"
    )
    graduate_standing_events: int = Field(
        20_000,
        gt=0,
        le=1_000_000_000,
        description="... or once this many events were applied at one instant of event time: a clock that stands "
        "still (dates filled in) measures no age, and the pool would hold the catalogue for good. Events in one ms "
        "of a live stream are far fewer; at most a billion, as graduate_views",
    )
    bandit_prior_mass: float = Field(
        10.0, gt=0, description="pseudo-views of the Beta prior, whose mean is the pool's own smoothed CTR"
    )
    fold_in_users: int = Field(
        1_000, gt=0, le=100_000, description="users kept per new item for its fold-in at graduation (the first ones)"
    )
    read_max: int = Field(
        10_000,
        gt=0,
        le=1_000_000,
        description="the newest pool items a reader reloads (twice a second): fresh lists and exploration draw on "
        "them; reading a 100,000-item pool took a third of a reader's CPU and blocked Redis past its feed deadline",
    )
    explore_max: int = Field(
        2_000,
        gt=0,
        le=1_000_000,
        description="pool items a feed's Thompson draw runs over: each snapshot reload keeps the top of one draw over "
        "the pool it read (a draw costs ~0.1 µs an item per feed: a 100,000-item pool cost ~15 ms a feed)",
    )


class ReaderSettings(Section):
    """The reader process: where it listens, its Redis budget, pages, sessions, caches and its API key."""

    variables: ClassVar[Mapping[str, str]] = {
        "host": "reader_host",
        "port": "reader_port",
        "redis_timeout_s": "reader_redis_timeout_s",
        "redis_connect_timeout_s": "reader_redis_connect_timeout_s",
        "redis_connections": "reader_redis_connections",
        "workers": "reader_workers",
    }

    host: str = Field("127.0.0.1", pattern=HOST_PATTERN, description="interface the reader binds to")
    port: int = Field(8080, gt=0, lt=65536, description="the reader's port")
    workers: int = Field(
        1, ge=1, le=64, description="reader processes sharing the port, each with its own snapshot and caches"
    )
    redis_timeout_s: float = Field(0.05, gt=0, le=5, description="past this, answer degraded")
    redis_connect_timeout_s: float = Field(
        1.0, gt=0, le=30, description="budget of a new Redis connection (TCP, TLS handshake, AUTH), apart from a feed's"
    )
    redis_connections: int = Field(
        64,
        ge=1,
        le=1024,
        description="Redis connections of each reader process; a round trip waits for a free one within its budget",
    )
    feed_max_limit: int = Field(100, gt=0, le=1000, description="largest page a client may ask for")
    session_ttl_s: int = Field(
        1800,
        gt=0,
        le=SESSION_TTL_MAX_S,
        description="how long an infinite-scroll cursor lives after its last page (at most a week, SESSION_TTL_MAX_S)",
    )
    sessions_per_user: int = Field(
        8, gt=0, le=1000, description="scroll sessions kept per known user; a new one evicts the least recently used"
    )
    anonymous_sessions: int = Field(
        10_000, gt=0, description="scroll sessions kept for unknown user ids, all together; least recently used evicted"
    )
    pool_cache_s: float = Field(0.5, ge=0, le=60, description="in-process cache of the bandit pool")
    popular_refresh_s: float = Field(1.0, gt=0, le=300, description="refresh of the degraded-mode popular list")
    api_key: SecretStr | None = Field(
        None,
        description="the key write routes need (and reads with protect_reads): printable ASCII without surrounding "
        "whitespace, what an HTTP header carries (recstream/contracts/headers.py)",
    )
    open_writes: bool = Field(
        False, description="accept writes without an API key when none is set (a closed demo network only)"
    )
    protect_reads: bool = Field(False, description="read routes also need the API key")
    bulk_max_items: int = Field(1_000, gt=0, le=100_000, description="items in one POST /v1/items, at most")
    click_window_s: int = Field(60, gt=0, le=86_400, description="window of the click and view limits")
    clicks_per_client: int = Field(
        6_000, ge=0, description="clicks one client address may report per window; more: 429 (0: no limit)"
    )
    clicks_per_user_item: int = Field(
        3, ge=0, description="clicks of one user on one item per window; more are dropped (0: no limit)"
    )
    views_per_user_item: int = Field(
        5,
        ge=0,
        description="views (every event that is not a click: a dislike too) of one user on one item per window; more "
        "are dropped (0: no limit). A feed shows an item once per scroll session and the seen set keeps it off the "
        "next ones, so a person is shown an item once or twice a window; a replay, to push its CTR and the ranker "
        "down, hundreds of times",
    )

    @field_validator("api_key")
    @classmethod
    def _key_a_request_can_send(cls, value: SecretStr | None) -> SecretStr | None:
        """Refuse a key no request can match (every write would answer 401), never saying the key."""
        if value is None:
            return value
        if not value.get_secret_value():
            raise ValueError("an empty key matches no request, so every write would answer 401; unset it for none")
        try:
            header_value("the key", value.get_secret_value())
        except ValueError as exc:
            raise ValueError(f"{exc}: no request can send it, so every write would answer 401") from None
        return value


class RankerSettings(Section):
    """The online ranker the workers train from served feature vectors (models/ranker.py: FTRL-Proximal)."""

    variables: ClassVar[Mapping[str, str]] = {
        "train": "ranker_train",
        "alpha": "ranker_alpha",
        "beta": "ranker_beta",
        "l1": "ranker_l1",
        "l2": "ranker_l2",
        "prior_ctr": "ranker_prior_ctr",
        "bias_alpha": "ranker_bias_alpha",
        "standardize": "ranker_standardize",
        "standardize_features": "ranker_standardize_features",
    }

    train: bool = Field(True, description="workers learn from views and clicks that carry a served feature vector")
    alpha: float = Field(
        0.07,
        gt=0,
        allow_inf_nan=False,
        description="FTRL α: the per-coordinate learning rate scale (the reader averages the partitions' weights, "
        "each learned from its share of the rows, so P partitions move about 1/√P as far as one would; validated "
        "against 0.05 and 0.1 on MovieLens and four closed-loop worlds, BENCHMARKS.md, seventh round)",
    )
    bias_alpha: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="FTRL α of the bias alone (unset: α): a larger one lets the bias learn the base rate, which the "
        "features otherwise explain in its place",
    )
    standardize: bool = Field(
        True,
        description="learn on features standardized by their running mean and standard deviation (each partition's "
        "own, in its state), so they move at the same pace whatever their scale; not with a prior (validated with "
        "the default standardize_features on MovieLens and both closed-loop worlds, BENCHMARKS.md)",
    )
    standardize_features: tuple[str, ...] = Field(
        ("als_rank", "batch_rank", "category_affinity", "category_lift"),
        description="with standardize, only these features (comma-separated names, contracts/ranking.py FEATURES); "
        "the others are learned raw (empty: every feature). Default: the taste features (position discounts in "
        "[0, 1], a log ratio near 0), which raw FTRL weighs far more slowly than the CTR logits",
    )
    beta: float = Field(1.0, gt=0, allow_inf_nan=False, description="FTRL β: smooths the learning rate's start")
    l1: float = Field(0.0, ge=0, allow_inf_nan=False, description="FTRL λ1: L1 penalty (sparse weights)")
    l2: float = Field(1.0, ge=0, allow_inf_nan=False, description="FTRL λ2: L2 penalty")
    prior_ctr: float = Field(
        0.0,
        ge=0,
        le=10,
        allow_inf_nan=False,
        description="the weights start from (and are pulled towards) this weight on the mean of the two smoothed-CTR "
        "logits, overall and in the segment: 1 = a cold ranker scores an item by its smoothed CTR (0: from zero; "
        "validated: 1 cost MovieLens 40% of its served HR@10, BENCHMARKS.md)",
    )

    @field_validator("standardize_features", mode="before")
    @classmethod
    def _feature_names(cls, value: object) -> object:
        """A comma-separated string (how a variable carries it) is the list of its names; each must be a feature."""
        names = [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else value
        if isinstance(names, list | tuple):
            unknown = [n for n in names if n not in FEATURES]
            if unknown:
                raise ValueError(f"not features: {', '.join(map(str, unknown))} (features: {', '.join(FEATURES)})")
        return names

    @model_validator(mode="after")
    def _prior_or_standardize(self) -> RankerSettings:
        """The prior weighs raw features, standardization learns on scaled ones: refuse both at once."""
        if self.standardize and self.prior_ctr > 0:
            raise ValueError("RECSTREAM_RANKER_STANDARDIZE and RECSTREAM_RANKER_PRIOR_CTR > 0 do not combine")
        return self


class LocalSettings(Section):
    """Files of the services ``recstream infra`` starts on this machine."""

    run_dir: Path = Field(Path(".run"), description="pid files, logs and data of locally started services")
    cache_dir: Path = Field(Path(".cache"), description="downloaded Kafka jars")
    kafka_server_properties: FilePath | None = Field(
        None,
        description="an existing file of lines appended to the local broker's server.properties (a secured "
        "listener's keystore, users)",
    )


SECTIONS: dict[str, type[Section]] = {
    "kafka": KafkaSettings,
    "redis": RedisSettings,
    "worker": WorkerSettings,
    "model": ModelSettings,
    "pool": PoolSettings,
    "reader": ReaderSettings,
    "blend": BlendSettings,
    "ranker": RankerSettings,
    "local": LocalSettings,
}
VARIABLES: dict[str, tuple[str, str]] = {
    section.variables.get(field, field): (name, field)
    for name, section in SECTIONS.items()
    for field in section.model_fields
}
"""Every variable's name (without ``RECSTREAM_``, lower case) → (section, field); ``experiment`` is its own."""
EXPERIMENT_VARIABLE = "experiment"
TOPIC_STEMS = {name: field.default for name, field in KafkaSettings.model_fields.items() if name.endswith("_topic")}
"""Every topic setting → its default name, the stem :meth:`Settings.on_topics` suffixes: all of a run's Kafka state."""
ALL_VARIABLES = (*sorted(VARIABLES), EXPERIMENT_VARIABLE)
"""Every variable a user may set (without ``RECSTREAM_``, lower case): the sections' and ``experiment``."""
JSON_VARIABLES = frozenset({EXPERIMENT_VARIABLE, "feedback_types"})
"""Variables whose value is JSON (a nested model), parsed before validation."""


class Settings(BaseModel):
    """Where the services are, what the topics are called, how workers, readers and the blend behave."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    worker: WorkerSettings = WorkerSettings()
    model: ModelSettings = ModelSettings()
    pool: PoolSettings = PoolSettings()
    reader: ReaderSettings = ReaderSettings()
    blend: BlendSettings = BlendSettings()
    ranker: RankerSettings = RankerSettings()
    local: LocalSettings = LocalSettings()
    experiment: Experiment | None = Field(
        None, description="the running A/B test, as JSON: name, salt, variants with weights and blend overrides"
    )

    @model_validator(mode="after")
    def _cluster_partitions(self) -> Settings:
        """On a Redis Cluster a users partition writes the slot of the events partition of the same number."""
        if self.redis.cluster and self.kafka.users_partitions != self.kafka.events_partitions:
            raise ValueError("RECSTREAM_REDIS_CLUSTER needs RECSTREAM_USERS_PARTITIONS = RECSTREAM_EVENTS_PARTITIONS")
        return self

    def replace(self, **values: object) -> Settings:
        """These settings with some values changed, named as their variables are (``batch_max=100``); validated.

        >>> load_settings().replace(batch_max=100, redis_prefix="t").worker.batch_max
        100
        """
        try:
            return Settings.model_validate(_nested(values, self))
        except ValidationError as exc:
            raise SettingsError(_lines(exc, {})) from None

    def model_copy(self, *, update: Mapping[str, object] | None = None, deep: bool = False) -> Settings:
        """Refuses ``update``: pydantic would set flat names as stray attributes nothing reads; use :meth:`replace`."""
        if update:
            raise TypeError(f"Settings.model_copy(update=...) ignores {sorted(update)}: use settings.replace(...)")
        return super().model_copy(deep=deep)

    def on_topics(self, suffix: str, **more: object) -> Settings:
        """These settings on topics of their own (``events-<suffix>``, …: every one of :data:`TOPIC_STEMS`) plus
        ``more``: a test or benchmark run that shares a broker with others and must not read their events."""
        return self.replace(**{field: f"{stem}-{suffix}" for field, stem in TOPIC_STEMS.items()}, **more)

    def by_variable(self) -> dict[str, object]:
        """Every variable's value (None: unset), by flat name, in :data:`ALL_VARIABLES` order."""
        values = {name: getattr(getattr(self, section), field) for name, (section, field) in VARIABLES.items()}
        values[EXPERIMENT_VARIABLE] = self.experiment
        return {name: values[name] for name in ALL_VARIABLES}

    def to_env(self) -> dict[str, str]:
        """These settings as ``RECSTREAM_*`` variables, to start a child process with the same view."""
        return {variable(name): _env_value(value) for name, value in self.by_variable().items() if value is not None}

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """A child process's environment: ``base`` (this process's) with these settings as its ``RECSTREAM_*``
        variables, the inherited ones dropped first. Why: :meth:`to_env` leaves out a setting held as None (unset),
        and the child would read the parent's variable instead (an API key, an experiment, a bias α).

        >>> env = load_settings().replace(api_key=None).environment({"RECSTREAM_API_KEY": "k", "HOME": "/h"})
        >>> "RECSTREAM_API_KEY" in env, env["HOME"]
        (False, '/h')
        """
        kept = {k: v for k, v in base.items() if not k.startswith(ENV_PREFIX) or k in TOOL_VARIABLES}
        return {**kept, **self.to_env()}


def _nested(values: Mapping[str, object], base: Settings | None = None) -> dict[str, object]:
    """Flat variable names and values → the nested dict :class:`Settings` validates (over ``base``'s values). Of
    ``base`` only the fields set are carried (the others are their defaults), so a section's ``model_fields_set``
    still says what the user set after a :meth:`Settings.replace`."""
    nested: dict[str, dict[str, object]] = {name: _set_fields(base, name) for name in SECTIONS}
    experiment = base.experiment if base is not None else None
    for name, value in values.items():
        if name == EXPERIMENT_VARIABLE:
            experiment = value
        elif name in VARIABLES:
            section, field = VARIABLES[name]
            nested[section][field] = value
        else:
            raise SettingsError(f"{variable(name)}: {_unknown(name)}")
    return {**nested, EXPERIMENT_VARIABLE: experiment}


def _set_fields(base: Settings | None, name: str) -> dict[str, object]:
    if base is None:
        return {}
    section = getattr(base, name)
    return {field: getattr(section, field) for field in section.model_fields_set}


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, ALL_VARIABLES, n=1)
    return "no such setting" + (f" (did you mean {variable(close[0])}?)" if close else "")


def _env_value(value: object) -> str:
    """How a variable spells the value: secrets revealed, nested models as JSON, a tuple of names comma-separated
    (what the parser reads back)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return value.model_dump_json(exclude_none=True) if isinstance(value, BaseModel) else str(value)


def _variable(loc: tuple[int | str, ...], given_as: Mapping[str, str]) -> str:
    """The variable of an error's location (or how ``given_as`` says the value was given), and where inside its JSON
    value for a nested one: ``('kafka', 'events_partitions')`` → ``RECSTREAM_EVENTS_PARTITIONS``;
    ``('experiment', 'variants', 1, 'weight')`` → ``RECSTREAM_EXPERIMENT (variants.1.weight)``."""
    names = {where: name for name, where in VARIABLES.items()}
    if len(loc) > 1 and (loc[0], loc[1]) in names:
        name, inside = names[(str(loc[0]), str(loc[1]))], loc[2:]
    else:
        name, inside = str(loc[0]), loc[1:]
    where = f" ({'.'.join(map(str, inside))})" if inside else ""
    return f"{given_as.get(name) or variable(name)}{where}"


def _lines(exc: ValidationError, given_as: Mapping[str, str]) -> str:
    return "\n".join(
        f"{_variable(err['loc'], given_as)}: {err['msg']}" if err["loc"] else err["msg"] for err in exc.errors()
    )


def reference(settings: Settings) -> list[tuple[str, str, str, str]]:
    """(variable, value, default, description) of every setting, as ``recstream settings`` lists them: each value as
    its variable spells it, a secret as ``***``, a URL without its password, ``unset`` for none.

    >>> rows = {row[0]: row[1:3] for row in reference(load_settings(batch_max=100, api_key="k"))}
    >>> rows["RECSTREAM_BATCH_MAX"], rows["RECSTREAM_API_KEY"], rows["RECSTREAM_EXPERIMENT"]
    (('100', '5000'), ('***', 'unset'), ('unset', 'unset'))
    """
    return [(variable(name), _shown(value), _shown(_field(name).default), _field(name).description or "")
            for name, value in settings.by_variable().items()]  # fmt: skip


def _field(name: str) -> FieldInfo:
    """The model field a variable sets."""
    if name == EXPERIMENT_VARIABLE:
        return Settings.model_fields[name]
    section, field = VARIABLES[name]
    return SECTIONS[section].model_fields[field]


def _shown(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "***"
    text = _env_value(value)
    return redacted(text) if "://" in text else text


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


TOOL_VARIABLES = frozenset({"RECSTREAM_SKIP_AUDIT", "RECSTREAM_REQUIRE_AUDIT"})
"""``RECSTREAM_*`` variables the project's own scripts read (``./dev``'s dependency audit), not settings: never
reported as unknown, since ``./dev test`` passes them on to every process it starts."""

_REPORTED: set[str] = set()
"""Unknown variables this process has reported: one that builds its settings again (a CLI's error line names the
address from them) says so once."""


def from_environment(environ: Mapping[str, str]) -> dict[str, object]:
    """The ``RECSTREAM_*`` variables of ``environ`` by setting name; unknown ones are logged, once per process,
    with the closest valid name (a misspelled variable would otherwise be ignored without a word)."""
    values: dict[str, object] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in TOOL_VARIABLES:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in JSON_VARIABLES:
            try:
                values[name] = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise SettingsError(f"{key}: invalid JSON, {exc}") from None
        elif name in VARIABLES:
            values[name] = raw
        elif key not in _REPORTED:
            _REPORTED.add(key)
            log.warning("%s is not a recstream setting, ignored: %s", key, _unknown(name))
    return values


def load_settings(given_as: Mapping[str, str] | None = None, /, **overrides: object) -> Settings:
    """Build the settings from the environment and explicit overrides (for tests and CLIs), by variable name.
    ``given_as`` names how the user gave an override (a CLI's option: ``{"reader_workers": "--workers"}``), so an
    invalid one is named by what the user wrote, not by a variable they did not set.

    >>> load_settings(events_partitions=8).kafka.events_partitions
    8
    >>> load_settings(events_partitions=0)
    Traceback (most recent call last):
    ...
    recstream.contracts.settings.SettingsError: RECSTREAM_EVENTS_PARTITIONS: Input should be greater than 0
    >>> load_settings({"events_partitions": "--partitions"}, events_partitions=0)
    Traceback (most recent call last):
    ...
    recstream.contracts.settings.SettingsError: --partitions: Input should be greater than 0
    """
    try:
        return Settings.model_validate(_nested({**from_environment(os.environ), **overrides}))
    except ValidationError as exc:
        raise SettingsError(_lines(exc, given_as or {})) from None
