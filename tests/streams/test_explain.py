"""A batch's "because you watched" items (Personalizer._explain, one stacked product per shape) are exactly what
each user's own product names: a restarted worker, whose batches group users otherwise, must write the same lists."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from recstream.streams.personalize import EXPLAIN_RECENT, Personalizer


def one_user(factors: np.ndarray, hits: list[tuple[str, float]], history: list[int], rows: dict, ids: list) -> list:
    """The per-user reference: argmax over the user's own (candidates × recent items) product."""
    recent = history[:EXPLAIN_RECENT]
    scores = np.round([score for _, score in hits], 5).tolist()
    if not hits or not recent:
        return [(item, score, None) for (item, _), score in zip(hits, scores, strict=True)]
    products = factors[[rows[item] for item, _ in hits]] @ factors[recent].T
    nearest = np.asarray(recent)[np.argmax(products, axis=1)]
    return [(item, score, ids[row]) for (item, _), score, row in zip(hits, scores, nearest.tolist(), strict=True)]


@pytest.mark.parametrize("seed", range(6))
def test_the_batched_explanation_is_each_users_own(seed: int) -> None:
    rng, draw = np.random.default_rng(seed), random.Random(seed)
    n_items, dim = 120, draw.choice([8, 33, 64])
    factors = rng.normal(size=(n_items, dim)).astype(np.float32)
    factors[10:20] = factors[10]  # tied items: argmax must name the same one of them
    ids = [f"i{k}" for k in range(n_items)]
    rows = {item: k for k, item in enumerate(ids)}
    found, histories = [], []
    for _ in range(40):  # users of every shape: no candidates, no history, one of each, past EXPLAIN_RECENT
        hits = [(ids[k], float(rng.random())) for k in rng.choice(n_items, draw.randint(0, 12), replace=False)]
        found.append(hits)
        histories.append([int(k) for k in rng.choice(n_items, draw.choice([0, 1, 3, 3, 25]), replace=False)])
    personalizer = Personalizer.__new__(Personalizer)
    personalizer.step, personalizer.rows, personalizer._ids = SimpleNamespace(factors=factors), rows, ids
    batched = personalizer._explain(found, histories)
    expected = [one_user(factors, hits, history, rows, ids) for hits, history in zip(found, histories, strict=True)]
    assert orjson.dumps(batched) == orjson.dumps(expected)
