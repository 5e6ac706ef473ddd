"""Item content → factor space: a ridge map fitted at train time, for items ALS has not seen.

Design row x = [multi-hot categories | standardized numeric features]; with X, Y (item
factors) centred on their means x̄, ȳ, the closed-form ridge solution is

    W = (XcᵀXc + μI)⁻¹ XcᵀYc,    b = ȳ − x̄W,    vector(x) = b + xW

so the intercept is not penalised. An item with no usable content (no categories, or only
unknown ones, and no known features) gets the mean item factor ȳ: the least-committal guess
for a new item, which the item fold-in replaces once users interact with it. A missing
numeric feature is imputed with its training mean (0 after standardization), and a standardized
value is held within ±Z_CLIP: a catalogue's outlier (a price of 1e308, a timestamp where a count
was expected) moves an item's vector as far as a strong feature does, never to a scale that would
swamp every inner product in the index.

Onboarding reuses the ALS user step: a new user who picked categories is treated as having
interacted with one pseudo-item per category, each pseudo-item being that category's
content vector ("an ALS step from content").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from recstream.models.user_step import ALSStep

Z_CLIP = 10.0
"""Standardized feature values are clipped to ±Z_CLIP, in the fit and for new items alike."""
_ARRAYS = ("categories", "feature_names", "feature_mean", "feature_scale", "weights", "intercept", "default")


@dataclass(frozen=True)
class ContentMap:
    categories: np.ndarray  # (C,) str, sorted vocabulary
    feature_names: np.ndarray  # (D,) str
    feature_mean: np.ndarray  # (D,) training mean of each numeric feature
    feature_scale: np.ndarray  # (D,) training std (1 where constant)
    weights: np.ndarray  # (C + D, k) W
    intercept: np.ndarray  # (k,) b
    default: np.ndarray  # (k,) mean item factor

    def __post_init__(self) -> None:
        c, d, k = len(self.categories), len(self.feature_names), len(self.default)
        shapes = {
            "feature_mean": (self.feature_mean.shape, (d,)),
            "feature_scale": (self.feature_scale.shape, (d,)),
            "weights": (self.weights.shape, (c + d, k)),
            "intercept": (self.intercept.shape, (k,)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"content map {name}: shape {got}, expected {want}")

    @property
    def dim(self) -> int:
        return len(self.default)

    def vector(self, categories: Iterable[str], features: Mapping[str, float] | None = None) -> np.ndarray:
        """Factor vector (float32) for an item's content; the default vector if none is usable.

        >>> cmap = fit_content_map([["a"], ["b"]], np.array([[1.0, 0.0], [0.0, 1.0]]), ridge=1e-9)
        >>> cmap.vector(["a"]).round(6), cmap.vector(["zzz"])
        (array([1., 0.], dtype=float32), array([0.5, 0.5], dtype=float32))
        """
        x = self._design_row(categories, features)
        out = self.default if x is None else self.intercept + x @ self.weights
        return out.astype(np.float32)

    def _design_row(self, categories: Iterable[str], features: Mapping[str, float] | None) -> np.ndarray | None:
        n_cat = len(self.categories)
        x = np.zeros(n_cat + len(self.feature_names))
        x[:n_cat] = np.isin(self.categories, list(categories))
        usable = bool(x.any())
        for j, name in enumerate(self.feature_names):
            value = (features or {}).get(str(name))
            if value is not None and np.isfinite(value):
                with np.errstate(over="ignore"):  # ±inf from an extreme value, clipped like any outlier
                    z = (np.float64(value) - self.feature_mean[j]) / self.feature_scale[j]
                x[n_cat + j] = np.clip(z, -Z_CLIP, Z_CLIP)
                usable = True
        return x if usable else None

    def save(self, path: str | Path) -> None:
        np.savez(path, **{name: getattr(self, name) for name in _ARRAYS})

    @classmethod
    def load(cls, path: str | Path) -> ContentMap:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [name for name in _ARRAYS if name not in arrays]
            if missing:
                raise ValueError(f"{path}: missing arrays {missing}")
            return cls(**{name: arrays[name] for name in _ARRAYS})


def fit_content_map(
    item_categories: Sequence[Iterable[str]],
    item_factors: np.ndarray,
    item_features: Sequence[Mapping[str, float]] | None = None,
    ridge: float = 1.0,
) -> ContentMap:
    """Fit W, b by closed-form ridge on centred content and factors (see the module docstring)."""
    y = np.asarray(item_factors, dtype=np.float64)
    n = len(y)
    if len(item_categories) != n or (item_features is not None and len(item_features) != n):
        raise ValueError("one categories entry (and features entry) per item factor row")
    if ridge <= 0:
        raise ValueError("ridge must be > 0")
    cat_sets = [set(c) for c in item_categories]
    vocab = np.asarray(sorted(set().union(*cat_sets)), dtype=str)
    names = np.asarray(sorted({f for row in item_features or () for f in row}), dtype=str)
    x = np.zeros((n, len(vocab) + len(names)))
    for i, cats in enumerate(cat_sets):
        x[i, np.searchsorted(vocab, sorted(cats))] = 1.0
    mean, scale = np.zeros(len(names)), np.ones(len(names))
    if len(names):
        raw = np.array([[row.get(str(f), np.nan) for f in names] for row in item_features], dtype=np.float64)
        raw[~np.isfinite(raw)] = np.nan  # missing, as vector() reads a non-finite value
        x[:, len(vocab) :], mean, scale = _standardized(raw)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    weights = np.linalg.solve(xc.T @ xc + ridge * np.eye(x.shape[1]), xc.T @ yc)
    return ContentMap(
        categories=vocab,
        feature_names=names,
        feature_mean=mean,
        feature_scale=scale,
        weights=weights,
        intercept=y_mean - x_mean @ weights,
        default=y_mean,
    )


def _standardized(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, mean, scale) of each column of ``raw`` (NaN: missing, which reads as z = 0), z clipped to ±Z_CLIP.

    The moments are taken of each column divided by its largest magnitude m, then scaled back: over values near
    ±1e308 a plain mean or variance overflows to inf and every fitted weight becomes NaN.

    >>> z, mean, scale = _standardized(np.array([[1e308], [-1e308], [np.nan]]))
    >>> z.ravel().tolist(), mean.tolist(), scale.tolist()
    ([1.0, -1.0, 0.0], [0.0], [1e+308])
    """
    with np.errstate(all="ignore"):  # all-missing columns: no moments, the NaNs are replaced below
        m = np.nan_to_num(np.nanmax(np.abs(raw), axis=0))
        m = np.where(m > 0, m, 1.0)
        unit = raw / m
        mean_u, std_u = np.nan_to_num(np.nanmean(unit, axis=0)), np.nan_to_num(np.nanstd(unit, axis=0))
        z = np.nan_to_num((unit - mean_u) / np.where(std_u > 0, std_u, 1.0))  # missing → the mean
    scale = std_u * m  # 0 where the column is constant, or its spread underflows: then 1
    return np.clip(z, -Z_CLIP, Z_CLIP), mean_u * m, np.where(scale > 0, scale, 1.0)


def onboarding_vector(
    step: ALSStep, content_map: ContentMap, picked_categories: Iterable[str], confidence: float
) -> np.ndarray:
    """Initial user vector: the user step over one pseudo-item per known picked category.

    Pseudo-item g is `content_map.vector([g])`, with confidence `confidence` (e.g. that of
    one click). Unknown categories are ignored; none known → the zero vector, as for any
    empty history.
    """
    vocab = set(content_map.categories.tolist())
    known = [g for g in dict.fromkeys(picked_categories) if g in vocab]
    pseudo = np.array([content_map.vector([g]) for g in known]).reshape(len(known), content_map.dim)
    return step.solve_vectors(pseudo, np.full(len(known), float(confidence)))
