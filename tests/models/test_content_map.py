from __future__ import annotations

import numpy as np
import pytest
from recstream.models.content_map import Z_CLIP, ContentMap, fit_content_map, onboarding_vector
from recstream.models.user_step import ALSStep

K = 8
CATS = [f"g{j}" for j in range(12)]


def _synthetic(n_items: int = 2000, noise: float = 0.01, seed: int = 0):
    """Item factors = [multi-hot | standardized features]·W + small noise."""
    rng = np.random.default_rng(seed)
    multi_hot = (rng.random((n_items, len(CATS))) < 0.15).astype(float)
    raw = np.column_stack([rng.normal(50, 10, n_items), rng.normal(-3, 0.5, n_items)])
    w = rng.standard_normal((len(CATS) + 2, K))
    clean = np.hstack([multi_hot, (raw - [50, -3]) / [10, 0.5]]) @ w
    factors = clean + noise * rng.standard_normal(clean.shape)
    categories = [[CATS[j] for j in np.flatnonzero(row)] for row in multi_hot]
    features = [{"year": a, "length": b} for a, b in raw]
    return categories, features, factors, clean


def test_recovers_factors_from_content():
    categories, features, factors, clean = _synthetic()
    cmap = fit_content_map(categories[:1500], factors[:1500], features[:1500], ridge=0.1)
    predicted = np.array([cmap.vector(c, f) for c, f in zip(categories[1500:], features[1500:], strict=True)])
    # held-out items: error close to the noise level, far below the signal
    rmse = np.sqrt(np.mean((predicted - clean[1500:]) ** 2))
    assert rmse < 0.02 and clean.std() > 1.0


def test_no_usable_content_gives_the_mean_item_factor():
    categories, features, factors, _ = _synthetic(n_items=300)
    cmap = fit_content_map(categories, factors, features)
    mean = factors.mean(axis=0).astype(np.float32)
    np.testing.assert_allclose(cmap.vector([]), mean, rtol=1e-6)
    np.testing.assert_allclose(cmap.vector(["never-seen"], {"unknown-feature": 3.0}), mean, rtol=1e-6)
    assert not np.allclose(cmap.vector(["g0"]), mean)  # one known category is usable content


def test_missing_feature_is_imputed_with_its_mean():
    categories, features, factors, _ = _synthetic(n_items=300)
    cmap = fit_content_map(categories, factors, features)
    mean_length = float(cmap.feature_mean[list(cmap.feature_names).index("length")])
    imputed = cmap.vector(["g1"], {"year": 60.0})
    np.testing.assert_allclose(imputed, cmap.vector(["g1"], {"year": 60.0, "length": mean_length}), rtol=1e-6)
    assert not np.allclose(imputed, cmap.vector(["g1"], {"year": 60.0, "length": 0.0}))


def test_save_load_round_trip(tmp_path):
    categories, features, factors, _ = _synthetic(n_items=300)
    cmap = fit_content_map(categories, factors, features)
    cmap.save(tmp_path / "content_map.npz")
    loaded = ContentMap.load(tmp_path / "content_map.npz")
    for cats, feats in [(["g2", "g5"], {"year": 40.0}), ([], None), (["g3"], None)]:
        np.testing.assert_array_equal(loaded.vector(cats, feats), cmap.vector(cats, feats))


def test_load_rejects_inconsistent_arrays(tmp_path):
    categories, _, factors, _ = _synthetic(n_items=100)
    cmap = fit_content_map(categories, factors)
    arrays = {name: getattr(cmap, name) for name in ContentMap.__dataclass_fields__}
    np.savez(tmp_path / "bad.npz", **{**arrays, "weights": arrays["weights"][:-1]})
    with pytest.raises(ValueError, match="weights"):
        ContentMap.load(tmp_path / "bad.npz")


def test_onboarding_user_prefers_items_of_picked_categories():
    categories, features, factors, _ = _synthetic()
    cmap = fit_content_map(categories, factors, features)
    step = ALSStep(factors.astype(np.float32), regularization=1.0)
    user = onboarding_vector(step, cmap, ["g4", "no-such-category"], confidence=5.0)
    top = np.argsort(-(factors @ user))[:50]
    share = np.mean(["g4" in categories[i] for i in top])
    base_rate = np.mean(["g4" in c for c in categories])
    assert share > 0.8 and base_rate < 0.4  # over twice the base rate (15%)
    assert not onboarding_vector(step, cmap, ["no-such-category"], confidence=5.0).any()


def test_extreme_feature_values_leave_the_map_finite():
    """Values near ±1e308 (finite, so the item schema accepts them) overflowed the plain mean and variance: every
    weight was NaN, and so was every item's content vector, categories-only ones too."""
    categories, features, factors, _ = _synthetic(n_items=300)
    features = [dict(f) for f in features]
    for k, value in enumerate([1e308, 1e308, -1e308, float("inf")]):
        features[k]["year"] = value
    cmap = fit_content_map(categories, factors, features)
    assert np.isfinite(cmap.weights).all() and np.isfinite(cmap.intercept).all()
    assert np.isfinite(cmap.vector(["g1"])).all()
    assert np.isfinite(cmap.vector(["g1"], {"year": -1e308, "length": 1e308})).all()


def test_an_outlier_moves_a_new_item_no_further_than_z_clip():
    """A new item's value far outside the training range counts as Z_CLIP standard deviations, not as its raw
    z-score: a price of 1e12 where prices were ~50 must not put the item's vector at a scale that swamps the index."""
    categories, features, factors, _ = _synthetic(n_items=300)
    cmap = fit_content_map(categories, factors, features)
    year = list(cmap.feature_names).index("year")
    at_clip = cmap.feature_mean[year] + Z_CLIP * cmap.feature_scale[year]
    clipped = cmap.vector(["g1"], {"year": at_clip})
    np.testing.assert_allclose(cmap.vector(["g1"], {"year": 1e12}), clipped, rtol=1e-6)
    np.testing.assert_allclose(cmap.vector(["g1"], {"year": at_clip * 0.999}), clipped, rtol=0.01)
    assert not np.allclose(cmap.vector(["g1"], {"year": at_clip * 0.9}), clipped, rtol=1e-3)
