"""The ranking stage's contract: the features the reader served an item with, as events carry them back.

The reader scores every candidate of a page from a feature vector (:data:`FEATURES`, in this order),
keeps each served item's vector in the scroll session, and when ``POST /v1/events`` attributes a
view or click to that session it stamps the vector into the event's context under
:data:`CONTEXT_KEY`. The workers train the ranker on exactly those vectors (views are negatives,
clicks positives), so what the model learns from is what was served: no training/serving skew, and
since the vectors travel in the events log, a replay or ``recstream rebuild`` learns the same.

The value is one string (event context values are scalars): ``"<version>:<f1>,<f2>,…"``, the
version a digest of the feature names, so a worker ignores vectors of another feature set.

>>> value = encode_features([0.5, 1.0] + [0.0] * (len(FEATURES) - 2))
>>> value.startswith(FEATURE_VERSION + ":")
True
>>> decode_features(value)[:2].tolist()
[0.5, 1.0]
>>> decode_features("00000000:1,2") is None
True
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

FEATURES: tuple[str, ...] = (
    "als_score",  # x_u·y_i when the item is on the user's personal candidate list, else 0
    "personal",  # 1 when the personal candidate generator proposed it
    "popular",  # … the segment-popular generator
    "fresh",  # … the fresh-in-favourite-categories generator
    "explore",  # … the new-item pool
    "ctr_logit",  # logit of the item's smoothed CTR, overall
    "segment_ctr_logit",  # logit of its smoothed CTR within the user's segment
    "popular_rank",  # log1p of its rank in the segment's popular list (a large rank when absent)
    "age",  # log1p of its age in hours (event time)
    "category_affinity",  # the user's recent weight on the item's categories, in [0, 1]
    "warm",  # 1 when the user has a vector
)
FEATURE_VERSION = hashlib.blake2b(",".join(FEATURES).encode(), digest_size=4).hexdigest()
CONTEXT_KEY = "rf"
DIGITS = 4  # significant digits kept per feature: the string stays under the context's 256 characters


def encode_features(values: Sequence[float] | np.ndarray) -> str:
    """The context value for one served item's feature vector."""
    if len(values) != len(FEATURES):
        raise ValueError(f"expected {len(FEATURES)} features, got {len(values)}")
    return FEATURE_VERSION + ":" + ",".join(f"{float(v):.{DIGITS}g}" for v in values)


def decode_features(value: object) -> np.ndarray | None:
    """The feature vector a context value holds, or None when it is of another version, malformed or not finite.

    Rounded as it was served: the reader scores the rounded vector too, so both sides see the same numbers.
    """
    if not isinstance(value, str):
        return None
    version, _, body = value.partition(":")
    if version != FEATURE_VERSION:
        return None
    try:
        parsed = [float(part) for part in body.split(",")]
    except ValueError:
        return None
    if len(parsed) != len(FEATURES) or not all(math.isfinite(v) for v in parsed):
        return None
    return np.asarray(parsed, dtype=np.float64)


def rounded(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """The vector as a round trip through the context leaves it: what the reader scores and logs.

    >>> float(rounded([1 / 3] * len(FEATURES))[0])
    0.3333
    """
    return decode_features(encode_features(values))  # type: ignore[return-value]
