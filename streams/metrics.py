"""The worker's Prometheus metrics (served on ``RECSTREAM_WORKER_METRICS_PORT``).

Names are what the dashboards and alert rules in monitoring/ query; rename nothing here
without changing them in the same commit (a test runs every panel's query).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

import numpy as np
from prometheus_client import Counter, Gauge, Histogram
from recstream.streams.ranker_training import SKIP_REASONS, WINDOW_ROWS, BatchTraining, RecentRows

from recstream.contracts.experiments import Experiment, metric_labels

log = logging.getLogger(__name__)

EVENTS = Counter(
    "recstream_worker_events_total",
    "Valid events applied to Redis; type: view or click for the feedback types counted in CTR, else the type's name "
    "(item and user for those topics)",
    ["topic", "type"],
)
MESSAGES_SKIPPED = Counter(
    "recstream_worker_messages_skipped_total",
    "A batch's messages found at or below the watermark (already applied), each once per batch however often it was "
    "retried",
    ["topic"],
)
DEAD_LETTERS = Counter(
    "recstream_worker_dead_letters_total", "Inputs sent to the dead-letter topic", ["topic", "reason"]
)
BATCH_SIZE = Histogram(
    "recstream_worker_batch_events", "Events per applied batch", ["topic"],
    buckets=(1, 10, 50, 100, 500, 1_000, 2_000, 5_000, 10_000, 50_000),
)  # fmt: skip
BATCH_SECONDS = Histogram(
    "recstream_worker_batch_seconds", "Time to process and apply one batch", ["topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)  # fmt: skip
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2, 5, 10, 30)
"""Seconds; dense around the 500 ms freshness target, so a p99 estimate near it is not a wide interpolation."""
FRESHNESS = Histogram(
    "recstream_worker_freshness_seconds", "Event timestamp to state applied in Redis", buckets=LATENCY_BUCKETS
)
LAG = Gauge("recstream_worker_consumer_lag", "Messages behind the partition's high watermark", ["topic", "partition"])
STALE_RETRIES = Counter(
    "recstream_worker_stale_watermark_total", "Batches retried because another writer moved a watermark"
)
PRIOR = Gauge("recstream_worker_ctr_prior", "The quantized global CTR the rankings use")
RESCORES = Counter("recstream_worker_full_rescores_total", "Full ranking rescorings (the quantized prior moved)")
GRADUATIONS = Counter("recstream_worker_pool_graduations_total", "Items that left the new-item pool")
CLOCK_STANDING = Gauge(
    "recstream_worker_event_clock_standing",
    "1 while the event clock has stood at one instant for RECSTREAM_POOL_GRADUATE_STANDING_EVENTS events (timestamps "
    "filled in): every new-item pool item graduates until it moves",
)
SEGMENT_SCORES_WAITING = Gauge(
    "recstream_worker_segment_scores_waiting",
    "Items whose per-segment popular scores wait for the next segment pass (RECSTREAM_SEGMENT_RANK_S)",
)
FOLD_INS = Counter(
    "recstream_worker_fold_ins_total",
    "Graduated new items whose fold-in vector this worker computed and stored (every worker then applies it)",
)
FOLD_INS_FOLLOWED = Counter(
    "recstream_worker_fold_ins_followed_total",
    "Fold-ins this worker read from the fold-in log and applied to its index (kept for a newer model version if it "
    "serves an older one): every worker's, its own included",
)

USER_STEPS = Counter("recstream_worker_user_steps_total", "User vectors recomputed (exact iALS user step)")
USER_STEP_SECONDS = Histogram(
    "recstream_worker_user_step_seconds", "User steps + candidate queries of one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)  # fmt: skip
CANDIDATE_REFRESH = Histogram(
    "recstream_worker_candidate_refresh_seconds", "A click (or first event) to the user's new candidate list in Redis",
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
INDEX_SIZE = Gauge("recstream_worker_index_items", "Live items in this worker's HNSW index")
ITEM_INSERTS = Counter("recstream_worker_index_inserts_total", "New items appended to the HNSW index")
MODEL_INFO = Gauge("recstream_worker_model_info", "The model version this worker serves (value 1)", ["version"])
MODEL_LOAD_FAILURES = Counter("recstream_worker_model_load_failures_total", "Model versions that failed to load")
UNREADABLE_STATE = Counter(
    "recstream_worker_unreadable_state_total",
    "Values read from Redis in a shape no worker writes (another writer's), skipped: fold_in_log (a fold-in log entry) "
    "and fold_in (a version's stored fold-in) are not applied, fold_in_user (a user's field of a new item's fold-in "
    "inputs) is left out of the fold-in, a user's history is read as empty, a user's segment as unknown (the default "
    "segment)",
    ["kind"],
)
for _kind in ("fold_in_log", "fold_in", "fold_in_user", "history", "segment"):
    UNREADABLE_STATE.labels(_kind)


def count_unreadable(found: Mapping[str, Collection[str]]) -> None:
    """Log and count what of Redis was skipped as unreadable (kind → each value, named): a worker that raised on it
    instead stopped applying."""
    for kind, values in found.items():
        for what in values:
            log.warning("unreadable %s skipped: %s", kind, what)
        UNREADABLE_STATE.labels(kind).inc(len(values))


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every v, with one bucket increment per bucket instead of per value.

    Why: the freshness histogram takes one observation per event, and a live batch holds thousands;
    per-value ``observe`` was ~2.5 µs each. This adds to the same per-bucket counters ``observe``
    uses (prometheus_client internals: ``_upper_bounds``, ``_buckets``, ``_sum``; a test checks the
    exposition equals per-value observes). A value falls in the first bucket whose bound is ≥ it.
    """
    if len(values) == 0:
        return
    bounds = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(np.sum(values)))
    for bucket in np.flatnonzero(counts).tolist():
        histogram._buckets[bucket].inc(int(counts[bucket]))


EXPERIMENT_EVENTS = Counter(
    "recstream_worker_experiment_events_total",
    "Valid events applied, by A/B experiment and variant (none: outside any; other: not configured here)",
    ["experiment", "variant", "type"],
)


def count_experiment_events(variants: Mapping[str | None, list[int]], experiment: Experiment | None) -> None:
    """Add a batch's ``[views, clicks]`` per variant label, under labels bounded by the configured experiment."""
    for variant, counts in variants.items():
        name, arm = metric_labels(experiment, variant)
        for kind, n in zip(("view", "click"), counts, strict=True):
            if n:
                EXPERIMENT_EVENTS.labels(name, arm, kind).inc(n)


BATCH_RETRIES = Counter(
    "recstream_worker_batch_retries_total",
    "Attempts to apply a batch that failed and will be retried, by why (processor.RETRY_REASONS)",
    ["topic", "reason"],
)
FOLD_IN_LOG_RETRIES = Counter(
    "recstream_worker_fold_in_log_retries_total",
    "Reads of the fold-in log that failed and will be retried: redis_unavailable (no connection, timeout) or "
    "redis_error (Redis answered an error: CLUSTERDOWN during a failover, LOADING, READONLY)",
    ["reason"],
)
for _reason in ("redis_unavailable", "redis_error"):
    FOLD_IN_LOG_RETRIES.labels(_reason)
DUPLICATES = Counter(
    "recstream_worker_duplicate_events_total",
    "Events dropped because their user sent the same event_id within the de-duplication window",
    ["topic"],
)
GAP_MESSAGES = Counter(
    "recstream_worker_gap_messages_total",
    "Messages re-applied from the log because Redis's watermark was behind the consumer (Redis lost a window)",
    ["topic"],
)

RANKER_ROWS = Counter(
    "recstream_worker_ranker_rows_total",
    "Views (label view, 0) and clicks (label click, 1) the online ranker learned from their served feature vector",
    ["label"],
)
RANKER_SKIPPED = Counter(
    "recstream_worker_ranker_rows_skipped_total",
    "Views and clicks the online ranker did not learn from: no vector, another feature set, or a broken one",
    ["reason"],
)
for _label in ("view", "click"):
    RANKER_ROWS.labels(_label)  # 0 from the start: a rate panel shows "nothing learned", not "no data"
for _reason in SKIP_REASONS:
    RANKER_SKIPPED.labels(_reason)
RANKER_AUC = Gauge(
    "recstream_worker_ranker_online_auc",
    f"ROC AUC of the last {WINDOW_ROWS} rows this worker's ranker learned, each predicted before it was learned "
    "(NaN until both a view and a click are in)",
)
RANKER_LOGLOSS = Gauge(
    "recstream_worker_ranker_online_logloss",
    f"Mean logloss of the last {WINDOW_ROWS} rows this worker's ranker learned, each predicted before it was learned",
)
RANKER_UPDATES = Gauge(
    "recstream_worker_ranker_updates",
    "Rows the ranker state of an events partition has learned in all (its n_updates)",
    ["topic", "partition"],
)


def watch_ranker(window: RecentRows) -> None:
    """The online AUC and logloss gauges compute over ``window`` when Prometheus scrapes (a sort of its rows):
    once a scrape, not once a batch."""
    RANKER_AUC.set_function(window.auc)
    RANKER_LOGLOSS.set_function(window.logloss)


def count_ranker_rows(training: BatchTraining) -> None:
    """A batch's rows learned by label, skipped by reason, and each trained partition's n_updates."""
    for (topic, partition), trained in training.trained.items():
        clicks = int(trained.labels.sum())
        RANKER_ROWS.labels("click").inc(clicks)
        RANKER_ROWS.labels("view").inc(len(trained.labels) - clicks)
        RANKER_UPDATES.labels(topic, str(partition)).set(trained.n_updates)
    for reason, n in training.skipped.items():
        RANKER_SKIPPED.labels(reason).inc(n)


def keep_lag(assigned: Collection[tuple[str, int]]) -> None:
    """Drop the lag of every partition not in ``assigned`` (a rebalance's whole assignment): the gauge is set only
    when a batch arrives, so a partition taken away kept its last value for good, and the lag figures (the largest
    report per partition) showed lag that was no longer anyone's, enough to fire RecstreamConsumerLagGrowing.

    >>> LAG.labels("events", "0").set(5); LAG.labels("events", "1").set(7)
    >>> keep_lag([("events", 1)])
    >>> sorted(s.labels["partition"] for s in LAG.collect()[0].samples)
    ['1']
    """
    kept = {(topic, str(partition)) for topic, partition in assigned}
    for sample in LAG.collect()[0].samples:
        if (labels := (sample.labels["topic"], sample.labels["partition"])) not in kept:
            LAG.remove(*labels)
