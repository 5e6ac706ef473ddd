"""The ranking stage's contract: the features the reader served an item with, as events carry them back.

The reader scores every candidate of a page from a feature vector (:data:`FEATURES`, in this order),
keeps each served item's vector in the scroll session, and when ``POST /v1/events`` attributes a
view or click to that session it stamps the vector into the event's context under
:data:`CONTEXT_KEY`. The workers train the ranker on exactly those vectors (views are negatives,
clicks positives), so what the model learns from is what was served: no training/serving skew, and
since the vectors travel in the events log, a replay or ``recstream rebuild`` learns the same.

The value is one string (event context values are scalars): ``"<version>:<f1>,<f2>,…"``, the
version a digest of the feature names, so a worker ignores vectors of another feature set. Each
value is written as the shortest decimal that reads back as the same double, so decoding gives
exactly the vector the reader scored; the reader rounds its vectors to DIGITS significant digits
first (:func:`rounded_rows`), which keeps a value well within the context's 256 characters.

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
import re
from collections.abc import Sequence

import numpy as np
import orjson

FEATURES: tuple[str, ...] = (
    "als_rank",  # 1 / log2(2 + position) on the user's personal candidate list (ALS score order), else 0
    "batch_rank",  # … on the user's batch candidate list (the last batch fit's own user vector), else 0
    "personal",  # 1 when the personal candidate generator proposed it
    "popular",  # … the segment-popular generator
    "fresh",  # … the fresh-in-favourite-categories generator
    "explore",  # … the new-item pool
    "ctr_logit",  # logit of the item's smoothed CTR, overall
    "segment_ctr_logit",  # logit of its smoothed CTR within the user's segment
    "pool_age",  # log1p of its age (event time) in units of the pool's graduation age; in events while the clock stands
    "category_affinity",  # the user's recent weight on the item's categories, in [0, 1]
    "category_lift",  # ln of the user's engagement per item in the item's categories over their mean (history)
    "warm",  # 1 when the user has history (weighted history, or items shown or clicked)
)
FEATURE_VERSION = hashlib.blake2b(",".join(FEATURES).encode(), digest_size=4).hexdigest()
CONTEXT_KEY = "rf"
MAX_VALUE_CHARS = 256
"""The events contract's bound on a context string (recstream/contracts/events.py Scalar)."""
MAX_ABS_FEATURE = 1e6
"""A served vector holding a value beyond ±this is malformed: the ranker learns nothing from it
(streams/ranker_training.py). Every feature the reader serves is
far inside it (flags, shares, a position discount, CTR logits within ±14, a log age); a producer writing to Kafka
could send 1e160, whose squared gradient overflows and turns the ranker's state to NaN."""
DIGITS = 4  # significant digits kept per feature: the string stays under the context's 256 characters
_ONE_VALUE = f".{DIGITS}g"  # built once: rounded_value runs per value a page computes
_K_OFFSET = 12  # the scale exponent k = DIGITS − 1 − ⌊log10 |v|⌋ of a value in [1e-15, 1e15] is in [-12, 18]
_UP = np.array([10.0 ** max(k, 0) for k in range(-_K_OFFSET, 19)])  # exact: every power of ten up to 10^22 is
_DOWN = np.array([10.0 ** max(-k, 0) for k in range(-_K_OFFSET, 19)])
_PREFIX = FEATURE_VERSION + ":"
_JSON_NUMBER_BYTES = b"0123456789+-.eE,"  # all a body of plain JSON numbers may hold (decode_rows)
_INTEGER_MINUS_ZERO = re.compile(r"-0(?![0-9.eE])")


def prior_weights(ctr: float) -> tuple[float, ...]:
    """The ranker's prior weights w₀ (bias first, then FEATURES): ``ctr`` / 2 on ``ctr_logit`` and on
    ``segment_ctr_logit``, 0 elsewhere. With ``ctr`` = 1 the logit is the mean of the item's two smoothed-CTR
    logits, so a ranker that has learned nothing scores an item by its smoothed CTR (ordering as the popular
    lists do, calibrated) instead of scoring every item ½; the learned weights are corrections to it.

    >>> w = prior_weights(1.0)
    >>> w[1 + FEATURES.index("ctr_logit")], w[1 + FEATURES.index("segment_ctr_logit")], sum(w)
    (0.5, 0.5, 1.0)
    """
    weights = [0.0] * (1 + len(FEATURES))
    for name in ("ctr_logit", "segment_ctr_logit"):
        weights[1 + FEATURES.index(name)] = ctr / 2.0
    return tuple(weights)


def encode_features(values: Sequence[float] | np.ndarray) -> str:
    """The context value for one served item's feature vector, rounded (:func:`rounded_rows`).

    >>> encode_features([1 / 3, 1.0, -12345.6] + [0.0] * (len(FEATURES) - 3)).partition(":")[2][:23]
    '0.3333,1.0,-12350.0,0.0'
    """
    if len(values) != len(FEATURES):
        raise ValueError(f"expected {len(FEATURES)} features, got {len(values)}")
    return encode_rows(rounded_rows(np.asarray(values, dtype=np.float64)[None, :]))[0]


def encode_rows(rows: np.ndarray) -> list[str]:
    """The context values of a (n, len(FEATURES)) matrix's rows as they are: decoding gives these rows, to the bit.

    Each value is written as its shortest round-trip decimal (orjson's float format: one C call for the whole
    matrix, cut at the rows' ``],[``, half the cost of a call per row for a page's ~20 rows), which for a rounded
    value has at most DIGITS significant digits. Rows are not rounded here: the reader scores rounded rows and logs
    those. A value that could not travel (not finite, or a row past MAX_VALUE_CHARS: round it first) is refused.

    >>> row = rounded_rows(np.array([[2 / 3] * len(FEATURES)]))
    >>> (decode_features(encode_rows(row)[0]) == row[0]).all()
    np.True_
    """
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(FEATURES):
        raise ValueError(f"rows must have shape (n, {len(FEATURES)}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features must be finite")
    if not len(x):
        return []
    values = [_PREFIX + row for row in orjson.dumps(x.tolist())[2:-2].decode().split("],[")]
    if max(map(len, values), default=0) > MAX_VALUE_CHARS:
        raise ValueError(f"a feature vector is longer than {MAX_VALUE_CHARS} characters: round it first")
    return values


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


def decode_rows(values: Sequence[object]) -> tuple[np.ndarray, list[int]]:
    """The vectors of many context values at once: a (k, len(FEATURES)) matrix of the ones
    :func:`decode_features` accepts, and their positions in ``values``; each row to the bit what it gives.

    Why: a worker decodes a vector per event, and a float() per value measured ~5× the cost of one
    JSON parse of the whole batch. The bulk path takes only bodies of plain JSON numbers (digits, sign,
    point, exponent; no ``-0`` integer, which JSON reads as 0 where float() keeps the sign), the right count
    of values and finite ones; JSON numbers are a subset of float()'s syntax and both round correctly.
    Anything else, or any doubt, takes the per-value path.

    >>> value = encode_features([0.25] * len(FEATURES))
    >>> rows, where = decode_rows([value, None, "00000000:1", value[:-1] + "x"])
    >>> rows.shape == (1, len(FEATURES)), where
    (True, [0])
    """
    where = [k for k, value in enumerate(values) if isinstance(value, str) and value.startswith(_PREFIX)]
    bodies = [values[k][len(_PREFIX) :] for k in where]  # type: ignore[index]
    joined = ",".join(bodies)
    commas = len(FEATURES) - 1
    if (
        bodies
        and not joined.encode().translate(None, _JSON_NUMBER_BYTES)
        and _INTEGER_MINUS_ZERO.search(joined) is None
        and all(body.count(",") == commas for body in bodies)
    ):
        try:
            rows = np.array(orjson.loads(f"[{joined}]"), dtype=np.float64).reshape(len(bodies), len(FEATURES))
        except (orjson.JSONDecodeError, ValueError, TypeError):
            rows = None
        if rows is not None and np.isfinite(rows).all():
            return rows, where
    decoded = [(k, decode_features(values[k])) for k in where]
    kept = [(k, row) for k, row in decoded if row is not None]
    matrix = np.array([row for _, row in kept], dtype=np.float64).reshape(len(kept), len(FEATURES))
    return matrix, [k for k, _ in kept]


def rounded(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """The vector as a round trip through the context leaves it: what the reader scores and logs.

    >>> float(rounded([1 / 3] * len(FEATURES))[0])
    0.3333
    """
    return decode_features(encode_features(values))  # type: ignore[return-value]


def rounded_value(value: float) -> float:
    """One value rounded to DIGITS significant digits, by the definition :func:`rounded_values` vectorizes
    (``float(f"{v:.4g}")``): for the few values a page computes itself (serving/features.py), a call each costs
    less than the vectorized rounding's fixed cost.

    >>> rounded_value(1 / 3), rounded_value(0.0), rounded_value(-12345.6)
    (0.3333, 0.0, -12350.0)
    """
    return float(format(value, _ONE_VALUE))


def rounded_rows(rows: np.ndarray) -> np.ndarray:
    """Every value of a (n, len(FEATURES)) matrix rounded to DIGITS significant digits, as ``float(f"{v:.4g}")``
    rounds it, to the bit, vectorized: what the reader scores and logs (:func:`rounded_values`).

    >>> rounded_rows(np.array([[1 / 3, 0.0, -12345.6, 2.5e-7] + [1.0] * (len(FEATURES) - 4)]))[0, :4].tolist()
    [0.3333, 0.0, -12350.0, 2.5e-07]
    """
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(FEATURES):
        raise ValueError(f"rows must have shape (n, {len(FEATURES)}), got {x.shape}")
    return rounded_values(x)


def rounded_values(values: np.ndarray) -> np.ndarray:
    """Every value of an array of any shape rounded as :func:`rounded_rows` rounds it (elementwise: a column rounded
    alone, or ahead of time, is what rounding its rows gives; a rounded value rounds to itself).

    Why: the reader scores every candidate of a page (about 60) with the vector it would log, and a
    string round trip per row costs more than the rest of the ranking. Each value v ≠ 0 becomes
    m / 10^k (m = v·10^k rounded to an integer of DIGITS digits; 10^k exact, one correctly rounded
    division), the double nearest to that decimal, which is what parsing it gives. Values whose
    scaled product lands within 1e-6 of a rounding tie (where the product's own rounding error could
    decide), or whose decimal exponent came out wrong, or outside [1e-15, 1e15], take the string path.

    >>> rounded_values(np.array([1 / 3, -0.0, 2.5e-7])).tolist()
    [0.3333, -0.0, 2.5e-07]
    """
    x = np.asarray(values, dtype=np.float64)
    magnitude = np.abs(x)
    if not (magnitude < np.inf).all():
        raise ValueError("features must be finite")
    fast = (magnitude >= 1e-15) & (magnitude <= 1e15)  # the others take the string path
    k = (DIGITS - 1 + _K_OFFSET) - np.floor(np.log10(np.where(fast, magnitude, 1.0))).astype(np.intp)
    up, down = _UP[k], _DOWN[k]  # 10^k as exact powers of ten, one of the two 1
    scaled = np.where(fast, x, 1.0) * up / down  # a single correctly rounded operation
    m = np.rint(scaled)
    size = np.abs(m)
    fast &= (size >= 10.0 ** (DIGITS - 1)) & (size <= 10.0**DIGITS) & (np.abs(np.abs(scaled - m) - 0.5) > 1e-6)
    out = m / up * down
    np.copyto(out, x, where=~fast)  # zeros as they are (the sign of -0.0 too, as the string keeps it)
    slow = ~fast & (x != 0.0)
    if slow.any():
        for at in zip(*np.nonzero(slow), strict=True):
            out[at] = float(f"{x[at]:.{DIGITS}g}")
    return out
