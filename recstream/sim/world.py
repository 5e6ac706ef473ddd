"""The synthetic world: hidden tastes and item appeal that generate the views and clicks.

A world model, not an event dump: `click_probability` and `oracle_top_k` give the truth a
closed-loop simulator scores a recommender against, and `events` is a browsing model that
generates a stream without any recommender (for `recstream produce --synthetic`).

Hidden state (public arrays, indexed by dense user and item indices):
- `taste[u]` ∈ R^d: part shared by users with the same age band, gender and occupation (so
  segments matter), part individual; scaled so that taste·item has standard deviation
  `affinity_sd`.
- `item_vectors[i]` ∈ R^d: part the mean of the vectors of its 1–3 categories
  (`item_category_mask[i]`), part its own;
  `quality[i]` ~ N(0, quality_sd²); `created_ms[i]`, non-decreasing in i, so the items
  available at time t are the prefix `range(available_items(t))`.
- P(click | u sees i at t) = σ(taste[u]·item_vectors[i] + quality[i] + bias) · 2^(−age/h),
  with `bias` calibrated at construction so a random impression clicks with `base_ctr`.

Items keep arriving as a Poisson process (`new_items_per_hour`), generated lazily in fixed
blocks from their own random stream, so the world is the same function of the seed however
far and in whatever steps it is advanced.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recstream.contracts.events import validate
from recstream.jobs.sources import Record

HOUR_MS = 3_600_000
ITEM_BLOCK = 256  # smallest arrival block
EVENT_CHUNK = 8_192  # views generated per vectorized step of `events`
CALIBRATION_SAMPLE = 20_000
BIAS_BOUND = 50.0
"""The calibrated bias is searched in ±this: σ(±50) is 0 or 1 to double precision, so a bias beyond is no bias."""
DEFAULT_RATE_PER_S = 20.0

AGE_BANDS = ((13, 17, 0.05), (18, 24, 0.18), (25, 34, 0.35), (35, 44, 0.2), (45, 55, 0.14), (56, 73, 0.08))
GENDERS = (("F", 0.45), ("M", 0.55))
OCCUPATIONS = (  # MovieLens 100K's, roughly most common first
    "student", "other", "educator", "engineer", "programmer", "administrator", "writer",
    "librarian", "technician", "executive", "healthcare", "artist", "scientist", "marketing",
    "salesman", "lawyer", "retired", "entertainment", "doctor", "homemaker", "none",
)  # fmt: skip
CATEGORY_COUNT_P = (0.5, 0.35, 0.15)  # an item has 1, 2 or 3 categories


class WorldConfig(BaseModel):
    """Everything that defines a world; the same config gives the same world."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # inf taste spread: NaN clicks

    seed: int = Field(0, ge=0)
    n_users: int = Field(2_000, ge=1)
    n_items: int = Field(1_000, ge=1, description="catalogue size at start_ms")
    n_categories: int = Field(12, ge=1, le=100, description="named c00, c01, …")
    dim: int = Field(16, ge=1, description="latent dimension of tastes and items")
    new_items_per_hour: float = Field(60.0, ge=0)
    appeal_half_life_h: float | None = Field(24.0, ge=0, description="appeal halves every h hours; None/0: off")
    base_ctr: float = Field(0.04, gt=0, lt=1, description="mean click probability of a random impression")
    start_ms: int = Field(1_700_000_000_000, ge=0)
    initial_age_span_h: float = Field(24.0, ge=0, description="the start catalogue was created over this span")
    attribute_weight: float = Field(0.5, ge=0, le=1, description="share of taste variance set by attributes")
    category_weight: float = Field(0.6, ge=0, le=1, description="share of item vector variance set by categories")
    affinity_sd: float = Field(1.0, ge=0, description="standard deviation of taste·item")
    quality_sd: float = Field(1.0, ge=0)
    activity_sd: float = Field(1.0, ge=0, description="log-normal spread of how often users browse")
    browse_popular: float = Field(0.5, ge=0, le=1, description="share of browsing candidates drawn by popularity")
    browse_recent: float = Field(0.3, ge=0, le=1, description="share drawn among the recent_pool newest items")
    recent_pool: int = Field(200, ge=1)
    browse_candidates: int = Field(4, ge=1, description="candidates a user chooses among, by taste")
    browse_temperature: float = Field(1.0, gt=0, description="softmax temperature of that taste choice")

    @model_validator(mode="after")
    def _browse_shares(self) -> WorldConfig:
        if self.browse_popular + self.browse_recent > 1:
            raise ValueError("browse_popular + browse_recent must be <= 1 (the rest is drawn uniformly)")
        return self


class World:
    """Hidden users and items, their click probabilities, the oracle, and a browsing event stream.

    >>> world = World(WorldConfig(seed=1, n_users=50, n_items=40))
    >>> stream = world.history(44)
    >>> [e.get("kind") or e["type"] for e in stream[38:]]
    ['item', 'item', 'user', 'view', 'user', 'view']
    >>> p = world.click_probability(0, world.oracle_top_k(0, world.config.start_ms, 3), world.config.start_ms)
    >>> bool(p[0] >= p[1] >= p[2])
    True
    """

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        users_seed, items_seed, calibration_seed, self._events_seed = np.random.SeedSequence(config.seed).spawn(4)
        self._make_users(np.random.default_rng(users_seed))
        self._item_rng = np.random.default_rng(items_seed)
        self.category_names = [f"c{j:02d}" for j in range(config.n_categories)]
        self.category_vectors = self._item_rng.standard_normal((config.n_categories, config.dim))
        popularity = 1.0 / np.arange(1, config.n_categories + 1) ** 0.7
        self._log_category_weight = np.log(popularity / popularity.sum())
        self.item_vectors = np.empty((0, config.dim))
        self.quality = np.empty(0)
        self.quality_hint = np.empty(0)
        self.created_ms = np.empty(0, dtype=np.int64)
        self.item_category_mask = np.zeros((0, config.n_categories), dtype=bool)
        self.item_ids: list[str] = []
        span_ms = config.initial_age_span_h * HOUR_MS
        ages = np.sort(np.ceil(self._item_rng.random(config.n_items) * span_ms).astype(np.int64))[::-1]
        self._add_items(config.start_ms - ages)
        self._arrival_clock = float(config.start_ms)
        self._closed = False  # a closed catalogue (MovieLens) never generates items
        self.bias = 0.0
        self.bias = self._calibrated_bias(np.random.default_rng(calibration_seed))

    def _make_users(self, rng: np.random.Generator) -> None:
        cfg = self.config
        n = cfg.n_users
        band = rng.choice(len(AGE_BANDS), n, p=[p for *_, p in AGE_BANDS])
        low, high = (np.array([b[j] for b in AGE_BANDS]) for j in (0, 1))
        age = low[band] + (rng.random(n) * (high[band] - low[band] + 1)).astype(np.int64)
        gender = rng.choice(len(GENDERS), n, p=[p for _, p in GENDERS])
        occupation_weight = 1.0 / np.arange(1, len(OCCUPATIONS) + 1) ** 0.8
        occupation = rng.choice(len(OCCUPATIONS), n, p=occupation_weight / occupation_weight.sum())
        # one vector per attribute value; a user's shared taste is the normalized sum of theirs
        attribute_vectors = rng.standard_normal((len(AGE_BANDS) + len(GENDERS) + len(OCCUPATIONS), cfg.dim))
        shared = (
            attribute_vectors[band]
            + attribute_vectors[len(AGE_BANDS) + gender]
            + attribute_vectors[len(AGE_BANDS) + len(GENDERS) + occupation]
        ) / math.sqrt(3)
        own = rng.standard_normal((n, cfg.dim))
        w = cfg.attribute_weight
        self.taste = cfg.affinity_sd / math.sqrt(cfg.dim) * (math.sqrt(w) * shared + math.sqrt(1 - w) * own)
        self._activity_cdf = np.cumsum(rng.lognormal(0.0, cfg.activity_sd, n))
        self.user_ids = [f"u{u:06d}" for u in range(n)]
        self.user_attributes = [
            {"age": a, "gender": GENDERS[g][0], "occupation": OCCUPATIONS[o]}
            for a, g, o in zip(age.tolist(), gender.tolist(), occupation.tolist(), strict=True)
        ]

    def _add_items(self, created_ms: np.ndarray) -> None:
        """Append items created at `created_ms` (non-decreasing, after every existing item)."""
        cfg, rng = self.config, self._item_rng
        n, n_cat = created_ms.size, cfg.n_categories
        counts = np.minimum(rng.choice(len(CATEGORY_COUNT_P), n, p=CATEGORY_COUNT_P) + 1, n_cat)
        # weighted sampling without replacement: the top `count` of log-weight + Gumbel noise
        ranked = np.argsort(-(self._log_category_weight + rng.gumbel(size=(n, n_cat))), axis=1)
        member = np.zeros((n, n_cat))
        in_item = np.arange(n_cat) < counts[:, None]
        np.put_along_axis(member, ranked, in_item / np.sqrt(counts)[:, None], axis=1)
        w = cfg.category_weight
        vectors = math.sqrt(w) * member @ self.category_vectors + math.sqrt(1 - w) * rng.standard_normal((n, cfg.dim))
        quality = cfg.quality_sd * rng.standard_normal(n)
        first = len(self.item_ids)
        self.item_vectors = np.concatenate([self.item_vectors, vectors])
        self.quality = np.concatenate([self.quality, quality])
        self.quality_hint = np.concatenate([self.quality_hint, quality + rng.standard_normal(n)])
        self.created_ms = np.concatenate([self.created_ms, created_ms])
        self.item_category_mask = np.concatenate([self.item_category_mask, member > 0])
        self.item_ids += [f"i{i:06d}" for i in range(first, first + n)]

    def _ensure_items(self, until_ms: int) -> None:
        """Generate arrival blocks until every item created at or before `until_ms` exists.

        Block b holds max(ITEM_BLOCK, items so far) items: a fixed function of b, so item j is
        the same however far ahead the world was advanced, and growth costs amortized O(1).
        """
        rate = self.config.new_items_per_hour
        while rate > 0 and not self._closed and self.created_ms[-1] <= until_ms:
            block = max(ITEM_BLOCK, len(self.item_ids))
            times = self._arrival_clock + np.cumsum(self._item_rng.exponential(HOUR_MS / rate, block))
            self._arrival_clock = float(times[-1])
            self._add_items(np.floor(times).astype(np.int64))

    def _calibrated_bias(self, rng: np.random.Generator) -> float:
        """The bias b with mean σ(s + b)·fade = base_ctr over random impressions at start_ms.

        A random impression: a uniformly random user shown a uniformly random item of the start
        catalogue. The mean is increasing in b, so bisection converges to the unique root.
        """
        users = rng.integers(0, self.config.n_users, CALIBRATION_SAMPLE)
        items = rng.integers(0, self.config.n_items, CALIBRATION_SAMPLE)
        score = self._score(users, items)
        fade = self.appeal(self.config.start_ms - self.created_ms[items])
        if self.config.base_ctr >= fade.mean():
            raise ValueError(
                f"base_ctr {self.config.base_ctr} is unreachable: with appeal_half_life_h and "
                f"initial_age_span_h as set, the mean click probability stays below {fade.mean():.4f}"
            )
        low, high = -BIAS_BOUND, BIAS_BOUND
        while high - low > 1e-9:
            mid = 0.5 * (low + high)
            low, high = (mid, high) if np.mean(_sigmoid(score + mid) * fade) < self.config.base_ctr else (low, mid)
        if abs(low + high) / 2 >= BIAS_BOUND - 1e-6:  # the search ended at a bound: the target was out of its reach
            raise ValueError(f"base_ctr {self.config.base_ctr} needs a bias beyond ±{BIAS_BOUND:g}: the world's "
                             "spreads put every impression's click probability on one side of it")  # fmt: skip
        return 0.5 * (low + high)

    def _score(self, user_idx: npt.ArrayLike, item_idx: npt.ArrayLike) -> np.ndarray:
        """taste·item + quality, broadcast over the index arrays."""
        items = np.asarray(item_idx)
        affinity = np.einsum("...d,...d->...", self.taste[np.asarray(user_idx)], self.item_vectors[items])
        return affinity + self.quality[items]

    def appeal(self, age_ms: npt.ArrayLike) -> np.ndarray:
        """Age fade 2^(−age/h): 1 when fading is off, 0 before the item exists (age < 0).

        >>> World(WorldConfig(n_users=5, n_items=5)).appeal([-1, 0, 24 * HOUR_MS]).tolist()
        [0.0, 1.0, 0.5]
        """
        age = np.asarray(age_ms, dtype=np.float64)
        half_life = self.config.appeal_half_life_h
        fade = np.exp2(-np.maximum(age, 0.0) / (half_life * HOUR_MS)) if half_life else np.ones_like(age)
        return np.where(age >= 0, fade, 0.0)

    def click_probability(self, user_idx: npt.ArrayLike, item_idx: npt.ArrayLike, now_ms: npt.ArrayLike) -> np.ndarray:
        """σ(taste·item + quality + bias)·2^(−age/h), broadcast over users, items and times."""
        items = np.asarray(item_idx)
        age = np.asarray(now_ms, dtype=np.int64) - self.created_ms[items]
        return _sigmoid(self._score(user_idx, items) + self.bias) * self.appeal(age)

    def available_items(self, now_ms: npt.ArrayLike) -> np.ndarray:
        """How many items exist at `now_ms`: the available ones are `range(available_items(now_ms))`."""
        now = np.asarray(now_ms, dtype=np.int64)
        self._ensure_items(int(now.max()))
        return np.searchsorted(self.created_ms, now, side="right")

    def oracle_top_k(self, user_idx: int, now_ms: int, k: int, candidates: npt.ArrayLike | None = None) -> np.ndarray:
        """The k available items (among `candidates` if given) with the highest true click
        probability for the user at `now_ms`, best first, ties to the earlier candidate."""
        available = int(self.available_items(now_ms))
        pool = np.arange(available) if candidates is None else np.asarray(candidates, dtype=np.int64)
        pool = pool[pool < available]
        order = np.argsort(-self.click_probability(user_idx, pool, now_ms), kind="stable")
        return pool[order[:k]]

    def item_index(self, item_id: str) -> int:
        """The dense index of one of this world's item ids (``i000042`` → 42), −1 for any other id.

        >>> world = World(WorldConfig(n_users=5, n_items=5))
        >>> world.item_index("i000003"), world.item_index("x1"), world.item_index("i999999")
        (3, -1, -1)
        """
        digits = item_id[1:]
        if item_id[:1] != "i" or not digits.isdigit() or int(digits) >= len(self.item_ids):
            return -1
        return int(digits)

    def sample_users(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n user indices, each drawn with probability proportional to the user's activity."""
        draws = rng.random(n) * self._activity_cdf[-1]
        return np.minimum(np.searchsorted(self._activity_cdf, draws, side="right"), self.config.n_users - 1)

    def user_message(self, user_idx: int, ts: int) -> dict[str, Any]:
        """The user's dict for the `users` topic (`kind` says which topic)."""
        attributes = dict(self.user_attributes[user_idx])
        return {"kind": "user", "user_id": self.user_ids[user_idx], "attributes": attributes, "ts": ts}

    def item_message(self, item_idx: int, ts: int) -> dict[str, Any]:
        """The item's dict for the `items` topic; `quality_hint` is its quality plus N(0, 1) noise."""
        return {
            "kind": "item",
            "op": "new",
            "item_id": self.item_ids[item_idx],
            "created_ts": int(self.created_ms[item_idx]),
            "categories": [self.category_names[c] for c in np.flatnonzero(self.item_category_mask[item_idx])],
            "features": {"quality_hint": round(float(self.quality_hint[item_idx]), 4)},
            "available": True,
            "ts": ts,
        }

    def events(
        self,
        start_ms: int | None = None,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        rng: np.random.Generator | None = None,
    ) -> Iterator[dict[str, Any]]:
        """An endless stream without a recommender: views at `rate_per_s` per second of world time
        (a Poisson process), each followed by its click with the true click probability.

        Browsing model, per view: an activity-weighted user considers `browse_candidates` items,
        each drawn by popularity (∝ (views so far in this stream + 1)·fade, a snapshot per chunk),
        among the `recent_pool` newest items, or uniformly, and picks one by a softmax of taste.
        Popularity feeding on views gives the stream a realistic skew (with the defaults the top
        10% of items get ~40% of the views); quality is left out of it on purpose, for the clicks
        to reveal. Choosing by taste makes the stream's CTR about twice `base_ctr` (~0.08).

        Order: the start catalogue (ts = start), then in time order; every item dict comes at its
        creation, before any event on it; a user's dict comes just before their first event; a
        click shares its view's ts. Ids are unique in the stream; event ids name the seed and start.
        Deterministic for (config, start_ms, rate_per_s, rng): the default rng derives from the seed.
        """
        start = self.config.start_ms if start_ms is None else start_ms
        if start < self.config.start_ms or not rate_per_s > 0:
            raise ValueError("start_ms must be >= config.start_ms and rate_per_s > 0")
        rng = np.random.default_rng(self._events_seed) if rng is None else rng
        prefix = f"w{self.config.seed}-{start}-"
        announced = bytearray(self.config.n_users)
        views = np.zeros(0, dtype=np.int64)
        clock, next_item, event_no = float(start), 0, itertools.count()
        while True:
            times = clock + np.cumsum(rng.exponential(1000.0 / rate_per_s, EVENT_CHUNK))
            clock = float(times[-1])
            ts = np.floor(times).astype(np.int64)
            self._ensure_items(int(ts[-1]))
            views = np.concatenate([views, np.zeros(len(self.item_ids) - views.size, dtype=np.int64)])
            users = self.sample_users(EVENT_CHUNK, rng)
            items = self._browse(users, ts, views, rng)
            clicks = rng.random(EVENT_CHUNK) < self.click_probability(users, items, ts)
            views += np.bincount(items, minlength=views.size)
            arrived = int(self.available_items(ts[-1]))
            arrivals = self.created_ms[next_item:arrived].tolist()
            first_arrival = next_item
            user_ids, item_ids = self.user_ids, self.item_ids
            for t, u, i, click in zip(ts.tolist(), users.tolist(), items.tolist(), clicks.tolist(), strict=True):
                while next_item < arrived and arrivals[next_item - first_arrival] <= t:
                    yield self.item_message(next_item, max(arrivals[next_item - first_arrival], start))
                    next_item += 1
                if not announced[u]:
                    announced[u] = 1
                    yield self.user_message(u, t)
                uid, iid = user_ids[u], item_ids[i]
                yield {
                    "type": "view",
                    "user_id": uid,
                    "item_id": iid,
                    "ts": t,
                    "event_id": f"{prefix}{next(event_no)}",
                }
                if click:
                    yield {
                        "type": "click",
                        "user_id": uid,
                        "item_id": iid,
                        "ts": t,
                        "event_id": f"{prefix}{next(event_no)}",
                    }

    def history(
        self,
        n_events: int,
        start_ms: int | None = None,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        rng: np.random.Generator | None = None,
    ) -> list[dict[str, Any]]:
        """The first `n_events` dicts (item, user, view and click alike) of `events`."""
        return list(itertools.islice(self.events(start_ms, rate_per_s, rng), n_events))

    def _browse(self, users: np.ndarray, ts: np.ndarray, views: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The item each of `users` views at `ts` under the browsing model of `events`."""
        cfg = self.config
        available = self.available_items(ts)
        known = int(available[0])  # popularity is a snapshot of the items known at the chunk's start
        weight = (views[:known] + 1.0) * self.appeal(ts[0] - self.created_ms[:known])
        cdf = np.cumsum(weight)
        shape = (users.size, cfg.browse_candidates)
        u, source = rng.random(shape), rng.random(shape)
        popular = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), known - 1)
        newest = available[:, None]
        recent = newest - 1 - (u * np.minimum(cfg.recent_pool, newest)).astype(np.int64)
        uniform = (u * newest).astype(np.int64)
        candidates = np.where(
            source < cfg.browse_popular,
            popular,
            np.where(source < cfg.browse_popular + cfg.browse_recent, recent, uniform),
        )
        affinity = np.einsum("bd,bmd->bm", self.taste[users], self.item_vectors[candidates])
        pick = np.argmax(affinity / cfg.browse_temperature + rng.gumbel(size=shape), axis=1)
        return candidates[np.arange(users.size), pick]


def movielens_world(folder: Path, config: WorldConfig) -> World:
    """A world whose hidden tastes are MovieLens 100K's (its true ones are not available: an approximation).

    - taste[u], item_vectors[i]: a rank-`dim` truncated SVD of the user-centred rating matrix
      (U·√S, V·√S), scaled so taste·item has standard deviation `affinity_sd` over the rated pairs;
    - quality[i]: the item's mean rating shrunk toward the global mean by 10 ratings, standardized
      to `quality_sd`; categories: its genres; attributes: u.user; activity: the user's rating count;
    - the catalogue: items ordered by their first rating; the first `n_items` exist at start (created
      over `initial_age_span_h`), the others arrive one every 1/`new_items_per_hour` until all 1,682 have.

    Click probabilities, fading, calibration and the browsing stream are the synthetic world's.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import svds

    data = np.loadtxt(folder / "u.data", dtype=np.int64)
    users, items, ratings, ts = (data[:, j] for j in range(4))
    users, items, ratings = users - 1, items - 1, ratings.astype(np.float64)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    first = np.full(n_items, np.iinfo(np.int64).max)
    np.minimum.at(first, items, ts)
    order = np.argsort(first, kind="stable")  # world index → MovieLens item
    rank = np.empty(n_items, dtype=np.int64)
    rank[order] = np.arange(n_items)
    items = rank[items]
    user_mean = np.bincount(users, ratings, n_users) / np.maximum(np.bincount(users, minlength=n_users), 1)
    centred = csr_matrix((ratings - user_mean[users], (users, items)), shape=(n_users, n_items))
    u, sv, vt = svds(centred, k=config.dim, random_state=config.seed)
    taste, vectors = u * np.sqrt(sv), vt.T * np.sqrt(sv)
    scale = config.affinity_sd / np.std(np.einsum("nd,nd->n", taste[users], vectors[items]))
    count = np.bincount(items, minlength=n_items)
    mean = (np.bincount(items, ratings, n_items) + 10 * ratings.mean()) / (count + 10)
    genres = [line.split("|")[0].replace("'", "").replace(" ", "_")
              for line in (folder / "u.genre").read_text(encoding="latin-1").splitlines() if line.strip()]  # fmt: skip
    mask = np.zeros((n_items, len(genres)), dtype=bool)
    for line in (folder / "u.item").read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        mask[rank[int(fields[0]) - 1]] = [flag == "1" for flag in fields[-len(genres) :]]
    at_start = min(config.n_items, n_items)
    config = config.model_copy(update={"n_users": n_users, "n_items": at_start, "n_categories": len(genres)})
    rng = np.random.default_rng(config.seed)
    world = World.__new__(World)
    world.config = config
    *_, calibration_seed, world._events_seed = np.random.SeedSequence(config.seed).spawn(4)
    world.taste = taste * np.sqrt(scale)
    world.item_vectors = vectors * np.sqrt(scale)
    world.quality = config.quality_sd * (mean - mean.mean()) / mean.std()
    world.quality_hint = world.quality + rng.standard_normal(n_items)
    span_ms = config.initial_age_span_h * HOUR_MS
    start_ages = np.sort(np.ceil(rng.random(at_start) * span_ms).astype(np.int64))[::-1]
    step_ms = HOUR_MS / config.new_items_per_hour if config.new_items_per_hour else float("inf")
    later = config.start_ms + np.minimum(np.arange(1, n_items - at_start + 1) * step_ms, 2**62).astype(np.int64)
    world.created_ms = np.concatenate([config.start_ms - start_ages, later])
    world.item_category_mask = mask
    world.category_names = genres
    world.item_ids = [f"i{i:06d}" for i in range(n_items)]
    world.user_ids = [f"u{u:06d}" for u in range(n_users)]
    world.user_attributes = []
    for line in (folder / "u.user").read_text(encoding="latin-1").splitlines():
        _, age, gender, occupation, _zip = line.split("|")
        world.user_attributes.append({"age": int(age), "gender": gender, "occupation": occupation})
    world._activity_cdf = np.cumsum(np.bincount(users, minlength=n_users).astype(np.float64))
    world._closed = True
    world.bias = 0.0
    world.bias = world._calibrated_bias(np.random.default_rng(calibration_seed))
    return world


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) = 1/(1 + e^−x), written with tanh so it never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def synthetic(
    n_records: int,
    seed: int = 7,
    start_ms: int | None = None,
    config: WorldConfig | None = None,
    rate_per_s: float = DEFAULT_RATE_PER_S,
    *,
    events: bool = False,
) -> Iterator[Record]:
    """``n_records`` messages of the synthetic world (users and items announced before their first event).

    ``events``: ``n_records`` counts the events alone, and the users and items they need come on top (what
    ``recstream produce --synthetic N`` promises); the benchmarks size their histories in messages.
    ``config``: a named world (recstream.sim.simulator.WORLDS), the default world otherwise; ``seed``
    replaces its seed. With ``start_ms`` the world's clock starts there (e.g. now, for a live demo); the
    default is the world's fixed epoch, so a seed always gives the same stream.
    """
    changes: dict[str, int] = {"seed": seed} if start_ms is None else {"seed": seed, "start_ms": start_ms}
    config = (config or WorldConfig()).model_copy(update=changes)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    counted = 0
    for number, obj in enumerate(World(config).events(rate_per_s=rate_per_s), start=1):
        if counted >= n_records:
            return
        kind = obj.pop("kind", "event")
        counted += not events or kind == "event"
        yield Record(kind, validate(obj, kind, now_ms), number)
