"""Experiments: assignment is deterministic, balanced and reshuffled by the salt; a configuration that cannot be
right is refused with the variable's name."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from pydantic import ValidationError

from recstream.contracts.experiments import (
    BLEND_SETTINGS,
    MAX_VARIANTS,
    Experiment,
    Variant,
    metric_labels,
)
from recstream.contracts.settings import BlendSettings, SettingsError, load_settings

USERS = [f"u{k:06d}" for k in range(10_000)]


def experiment(salt: str = "s1", weights: tuple[float, ...] = (0.5, 0.5)) -> Experiment:
    return Experiment(
        name="blend", salt=salt, variants=[Variant(name=f"v{k}", weight=w) for k, w in enumerate(weights)]
    )


def test_assignment_is_deterministic_across_instances():
    first, second = experiment(), experiment()
    assert [first.assign(u).name for u in USERS] == [second.assign(u).name for u in USERS]


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.2, 0.3, 0.5), (0.1, 0.9)])
def test_assignment_follows_the_weights_within_sampling_error_over_10k_ids(weights):
    counts = Counter(experiment(weights=weights).assign(u).name for u in USERS)
    for k, w in enumerate(weights):
        sd = math.sqrt(len(USERS) * w * (1 - w))
        assert abs(counts[f"v{k}"] - len(USERS) * w) < 4 * sd, (counts, weights)


def test_a_new_salt_reshuffles_users_independently_of_the_old_split():
    old, new = experiment("s1"), experiment("s2")
    same = sum(old.assign(u).name == new.assign(u).name for u in USERS)
    # independent 50/50 splits agree for half the users: 5,000 ± 4·50
    assert abs(same - 5_000) < 200


def test_metric_labels_stay_within_the_configured_names():
    e = experiment(weights=(0.25,) * 4)
    labels = {metric_labels(e, v) for v in ["blend:v0", "blend:v3", "blend:x", "old:v0", None]}
    labels |= {metric_labels(None, f"any:{k}") for k in range(100)}
    assert labels == {("blend", "v0"), ("blend", "v3"), ("blend", "other"), ("other", "other"), ("none", "none")}


@pytest.mark.parametrize(
    ("variants", "says"),
    [
        ([{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.6}], "weights must sum to 1"),
        ([{"name": "a", "weight": 0.5}, {"name": "a", "weight": 0.5}], "unique"),
        ([{"name": "a", "weight": 1.0}], "at least 2"),
        ([{"name": f"v{k}", "weight": 1 / (MAX_VARIANTS + 1)} for k in range(MAX_VARIANTS + 1)], "at most 8"),
        ([{"name": "a b", "weight": 0.5}, {"name": "b", "weight": 0.5}], "pattern"),
        ([{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.5, "share_explore": 2}], "less than or equal"),
        ([{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.5, "share_explorer": 0.2}], "Extra inputs"),
    ],
)
def test_an_invalid_experiment_fails_fast_naming_the_variable(variants, says):
    with pytest.raises(SettingsError, match=f"RECSTREAM_EXPERIMENT[^:]*: .*{says}"):
        load_settings(experiment={"name": "x", "salt": "s", "variants": variants})


def test_a_bad_nested_value_is_named_by_its_path_in_the_variable():
    variants = [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.5, "share_explore": 2}]
    with pytest.raises(SettingsError, match=r"^RECSTREAM_EXPERIMENT \(variants\.1\.share_explore\): Input should be"):
        load_settings(experiment={"name": "x", "salt": "s", "variants": variants})


def test_the_experiment_round_trips_through_the_environment(monkeypatch):
    settings = load_settings(
        experiment={
            "name": "x",
            "salt": "s",
            "control": "b",
            "variants": [{"name": "a", "weight": 0.3, "explore_policy": "none"}, {"name": "b", "weight": 0.7}],
        }
    )
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert load_settings().experiment == settings.experiment
    assert settings.experiment.control_name == "b"
    with pytest.raises(ValidationError, match="control"):
        Experiment(
            name="x",
            salt="s",
            control="c",
            variants=[Variant(name="a", weight=0.5), Variant(name="b", weight=0.5)],
        )


def test_a_variant_overrides_exactly_the_blend_settings_and_each_is_a_setting():
    """A Variant field missing from BLEND_SETTINGS would be validated and then silently ignored by the reader."""
    assert set(BLEND_SETTINGS) == set(Variant.model_fields) - {"name", "weight"}
    assert set(BLEND_SETTINGS) <= set(BlendSettings.model_fields)
    variant = Variant(name="ctr_only", weight=0.5, popular_personal_head=0)
    assert load_settings().replace(**variant.overrides()).blend.popular_personal_head == 0


def _bounds() -> list[tuple[str, float]]:
    return [(name, limit) for name in BLEND_SETTINGS for bound in BlendSettings.model_fields[name].metadata
            for limit in (getattr(bound, "ge", None), getattr(bound, "le", None)) if limit is not None]  # fmt: skip


@pytest.mark.parametrize(("name", "limit"), _bounds())
@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_a_variant_takes_exactly_the_values_its_setting_takes(name, limit, offset):
    """A bound looser than the setting's would pass the experiment's validation and fail the reader's replace; one
    tighter would refuse an arm the deployment could run. At each bound of each setting, − 1, on it and + 1 (a
    hundredth for a share)."""
    value = limit + offset * (1 if BlendSettings.model_fields[name].annotation is int else 0.01)
    variants = [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.5, name: value}]
    try:
        load_settings(**{name: value})
    except SettingsError:
        with pytest.raises(SettingsError, match=rf"RECSTREAM_EXPERIMENT \(variants\.1\.{name}\)"):
            load_settings(experiment={"name": "x", "salt": "s", "variants": variants})
        return
    settings = load_settings(experiment={"name": "x", "salt": "s", "variants": variants})
    assert getattr(settings.replace(**settings.experiment.variants[1].overrides()).blend, name) == value
