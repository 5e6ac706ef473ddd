"""The ranker's training rows from events and one partition's update, without Kafka or Redis."""

from __future__ import annotations

import numpy as np
import pytest
from recstream.models.ranker import FTRLConfig, FTRLRanker, auc, logloss
from recstream.streams.ranker_training import RecentRows, batch_rows, ftrl_config, restore, train, train_batch

from recstream.contracts.events import Event
from recstream.contracts.ranking import CONTEXT_KEY, FEATURE_VERSION, FEATURES, MAX_ABS_FEATURE, encode_features
from recstream.contracts.settings import RankerSettings

T0 = 1_700_000_000_000
F = len(FEATURES)


def event(kind: str, value: object = None, user: str = "u1") -> Event:
    context = None if value is None else {CONTEXT_KEY: value}
    return Event(type=kind, user_id=user, item_id="i1", ts=T0, context=context)


def vector(n: int, fill: float = 0.5) -> str:
    """A context value of the current version holding ``n`` numbers (valid only when n == len(FEATURES))."""
    return FEATURE_VERSION + ":" + ",".join([str(fill)] * n)


def test_views_are_negatives_and_clicks_positives_per_partition_in_order():
    rng = np.random.default_rng(1)
    vectors = rng.random((4, F)).round(3)
    events = [event(k, encode_features(v)) for k, v in zip(("view", "click", "view", "view"), vectors, strict=True)]
    a, b = ("events", 0), ("events", 3)
    rows = batch_rows(events, [a, b, a, a])
    assert set(rows.by_partition) == {a, b}
    assert rows.by_partition[a].labels.tolist() == [0.0, 0.0, 0.0]
    assert rows.by_partition[b].labels.tolist() == [1.0]
    np.testing.assert_array_equal(rows.by_partition[a].features, vectors[[0, 2, 3]])
    np.testing.assert_array_equal(rows.by_partition[b].features, vectors[[1]])
    assert sum(rows.skipped.values()) == 0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (vector(F - 1), "malformed"),
        (vector(F), None),
        (vector(F + 1), "malformed"),
        ("00000000:" + ",".join(["1"] * F), "other_version"),
        (None, "no_features"),
        (vector(F, fill=float("nan")), "malformed"),
        (vector(F).replace("0.5", "x", 1), "malformed"),
        (7, "malformed"),
        ("no colon at all", "malformed"),
        (vector(F, fill=MAX_ABS_FEATURE * (1 - 1e-9)), None),
        (vector(F, fill=MAX_ABS_FEATURE), None),
        (vector(F, fill=-MAX_ABS_FEATURE * (1 + 1e-9)), "malformed"),
        (vector(F, fill=1e160), "malformed"),
    ],
    ids=["F-1", "F", "F+1", "other-version", "absent", "nan", "not-a-number", "not-a-string", "no-version",
         "below-bound", "at-bound", "past-bound", "1e160"],
)  # fmt: skip
def test_only_a_vector_of_the_current_version_and_length_trains(value, reason):
    rows = batch_rows([event("click", value)], [("events", 0)])
    if reason is None:
        assert rows.by_partition[("events", 0)].features.shape == (1, F) and sum(rows.skipped.values()) == 0
    else:
        assert rows.by_partition == {} and dict(rows.skipped) == {reason: 1}


def test_a_vector_past_the_bound_trains_nothing_and_its_neighbours_train_as_alone():
    """A producer's 1e160 squared past the float range in the FTRL step: the partition's state became NaN, was
    refused when read back, and the partition's ranker started again from nothing."""
    good = encode_features(np.full(F, 0.5))
    mixed = batch_rows([event("view", good), event("click", vector(F, fill=1e160)), event("click", good)],
                       [("events", 0)] * 3)  # fmt: skip
    alone = batch_rows([event("view", good), event("click", good)], [("events", 0)] * 2)
    assert dict(mixed.skipped) == {"malformed": 1}
    trained = train_batch(mixed, {}, FTRLConfig()).trained[("events", 0)]
    assert trained.state == train_batch(alone, {}, FTRLConfig()).trained[("events", 0)].state
    assert FTRLRanker.from_bytes(trained.state).n_updates == 2


def test_a_partition_learns_the_same_bytes_in_one_batch_or_many():
    rng = np.random.default_rng(2)
    features = rng.random((60, F)).round(3)
    labels = (rng.random(60) < 0.3).astype(float)
    cfg = FTRLConfig(alpha=0.1)
    events = [event("click" if y else "view", encode_features(x)) for x, y in zip(features, labels, strict=True)]
    state = None
    for start in range(0, 60, 7):
        part = batch_rows(events[start : start + 7], [("events", 1)] * len(events[start : start + 7]))
        state = train_batch(part, {} if state is None else {("events", 1): state}, cfg).trained[("events", 1)].state
    once = train(None, batch_rows(events, [("events", 1)] * 60).by_partition[("events", 1)], cfg)
    direct = FTRLRanker(F, cfg)
    direct.update(features, labels)
    assert state == once.state == direct.to_bytes()
    assert once.n_updates == 60 and len(once.predictions) == 60


def test_a_stored_state_learns_on_under_the_configured_hyperparameters():
    stored = FTRLRanker(F, FTRLConfig(alpha=0.5))
    stored.update(np.ones((3, F)), [1, 0, 1])
    ranker = restore(stored.to_bytes(), FTRLConfig(alpha=0.05, l2=2.0))
    assert ranker.config == FTRLConfig(alpha=0.05, l2=2.0) and ranker.n_updates == 3
    accumulators = 16 * (F + 1)  # z and n, the tail of the bytes: kept as stored
    assert ranker.to_bytes()[-accumulators:] == stored.to_bytes()[-accumulators:]


@pytest.mark.parametrize(
    "state", [FTRLRanker(F + 1).to_bytes(), FTRLRanker(F).to_bytes()[:-1], b"garbage"], ids=["F+1", "cut", "garbage"]
)
def test_a_state_of_another_feature_set_or_unreadable_starts_a_new_ranker(state):
    ranker = restore(state, FTRLConfig())
    assert ranker.n_features == F and ranker.n_updates == 0


@pytest.mark.parametrize(("stored", "configured"), [(False, True), (True, False)])
def test_a_state_learned_with_the_other_standardization_starts_a_new_ranker(stored, configured):
    state = FTRLRanker(F, FTRLConfig(standardize=stored))
    state.update(np.ones((3, F)), [1, 0, 1])
    ranker = restore(state.to_bytes(), FTRLConfig(standardize=configured))
    assert ranker.n_updates == 0 and ranker.config.standardize is configured
    same = restore(state.to_bytes(), FTRLConfig(standardize=stored, alpha=0.2))
    assert same.n_updates == 3, "the same standardization learns on"


def test_a_state_that_standardized_other_features_starts_a_new_ranker():
    taste = FTRLConfig(standardize=True, standardize_only=(FEATURES.index("als_rank"),))
    state = FTRLRanker(F, taste)
    state.update(np.ones((3, F)), [1, 0, 1])
    assert restore(state.to_bytes(), FTRLConfig(standardize=True)).n_updates == 0, "every feature: another model"
    assert restore(state.to_bytes(), taste).n_updates == 3, "the same features learn on"


def test_every_feature_named_is_the_same_standardization_as_none_named_and_learns_on():
    """Naming every feature in RECSTREAM_RANKER_STANDARDIZE_FEATURES gives the mask of naming none; the stored state
    reads back as "every feature", so comparing the spellings started the ranker again after every batch."""
    config = ftrl_config(RankerSettings(standardize=True, standardize_features=",".join(FEATURES)))
    state = FTRLRanker(F, config)
    state.update(np.ones((3, F)), [1, 0, 1])
    assert restore(state.to_bytes(), config).n_updates == 3
    assert restore(state.to_bytes(), FTRLConfig(standardize=True)).n_updates == 3


def test_the_settings_name_the_features_to_standardize():
    settings = RankerSettings(standardize=True, standardize_features="category_lift, als_rank")
    assert settings.standardize_features == ("category_lift", "als_rank")
    config = ftrl_config(settings)
    assert config.standardize_only == (FEATURES.index("als_rank"), FEATURES.index("category_lift"))
    every = RankerSettings(standardize=True, standardize_features="")
    assert ftrl_config(every).standardize_only == (), "none named: every feature"


@pytest.mark.parametrize("n_rows", [99, 100, 101])
def test_the_online_window_holds_the_last_size_rows(n_rows):
    rng = np.random.default_rng(n_rows)
    predictions, labels = rng.random(n_rows), (rng.random(n_rows) < 0.4).astype(float)
    window = RecentRows(size=100)
    for start in range(0, n_rows, 30):  # added in batches that wrap around the ring
        window.add(predictions[start : start + 30], labels[start : start + 30])
    last = slice(max(0, n_rows - 100), n_rows)
    kept, kept_labels = window.window()
    assert sorted(zip(kept, kept_labels, strict=True)) == sorted(zip(predictions[last], labels[last], strict=True))
    assert window.auc() == pytest.approx(auc(predictions[last], labels[last]), rel=1e-12)
    assert window.logloss() == pytest.approx(logloss(predictions[last], labels[last]), rel=1e-12)


def test_the_online_window_is_undefined_until_both_labels_are_in():
    window = RecentRows(size=10)
    assert np.isnan(window.auc()) and np.isnan(window.logloss())
    window.add(np.array([0.3, 0.4]), np.array([0.0, 0.0]))
    assert np.isnan(window.auc()) and window.logloss() == pytest.approx(logloss([0.3, 0.4], [0, 0]))
