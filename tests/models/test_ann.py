from __future__ import annotations

import numpy as np
import pytest
from recstream.models.ann import ItemIndex

K = 64


@pytest.fixture(scope="module")
def catalogue():
    rng = np.random.default_rng(0)
    items = rng.standard_normal((5_000, K)).astype(np.float32)
    ids = [f"item-{i}" for i in range(len(items))]
    index = ItemIndex(K, capacity=len(items))
    index.add(ids, items)
    return ids, items, index


def test_recall_at_10_against_brute_force(catalogue):
    ids, items, index = catalogue
    queries = np.random.default_rng(1).standard_normal((200, K)).astype(np.float32)
    exact = np.argsort(-(queries @ items.T), axis=1)[:, :10]
    found = index.query_batch(queries, k=10)
    hits = sum(len({i for i, _ in f} & {ids[j] for j in e}) for f, e in zip(found, exact, strict=True))
    assert hits / (10 * len(queries)) >= 0.95


def test_scores_are_dot_products(catalogue):
    ids, items, index = catalogue
    query = items[7] * 2
    best, score = index.query(query, k=1)[0]
    assert score == pytest.approx(float(query @ items[ids.index(best)]), rel=1e-5)


def test_appended_item_is_found_at_its_vector_and_capacity_grows():
    rng = np.random.default_rng(2)
    index = ItemIndex(K, capacity=100)
    index.add([f"a{i}" for i in range(100)], rng.standard_normal((100, K)))
    for i in range(150):  # one at a time past the initial capacity
        vector = rng.standard_normal(K) * 3
        index.add([f"new{i}"], vector[None, :])
        assert index.query(vector, k=1)[0][0] == f"new{i}"
    assert len(index) == 250 and index.capacity >= 250 and "new149" in index


def test_which_exactly_tied_items_come_back_depends_on_the_order_they_were_added():
    """Why two workers' neighbour lists may end in different tied items (store/state_dump.same_neighbours)."""
    ids = [f"twin{k}" for k in range(6)]
    vectors = np.tile(np.array([[1.0, 0.5]], dtype=np.float32), (len(ids), 1))
    query = np.array([1.0, 0.0])

    def top(order: list[str]) -> set[str]:
        index = ItemIndex(2)
        index.add(order, vectors)
        return {i for i, _ in index.query(query, k=3)}

    assert top(ids) == top(ids)
    assert top(ids) != top(ids[::-1])


def test_update_replaces_the_vector():
    index = ItemIndex(2)
    index.add(["a", "b"], np.array([[1.0, 0.0], [0.0, 1.0]]))
    query = np.array([1.0, 0.1])
    assert [i for i, _ in index.query(query, k=2)] == ["a", "b"]
    index.add(["a"], np.array([[-1.0, 0.0]]))
    assert [i for i, _ in index.query(query, k=2)] == ["b", "a"]
    assert len(index) == 2


def test_deleted_item_is_never_returned_until_restored(catalogue):
    ids, items, _ = catalogue
    index = ItemIndex(K, capacity=1000)
    index.add(ids[:1000], items[:1000])
    gone = ids[:500]
    for item_id in gone:
        index.mark_deleted(item_id)
    index.mark_deleted(gone[0])  # idempotent
    returned = {i for row in index.query_batch(items[:500], k=20) for i, _ in row}
    assert not returned & set(gone) and len(index) == 500 and gone[3] not in index
    index.restore(gone[3])
    assert index.query(items[3], k=1)[0][0] == gone[3]
    # re-adding a deleted id un-deletes it with the new vector
    index.add([gone[4]], items[4:5])
    assert gone[4] in index and index.query(items[4], k=1)[0][0] == gone[4]


def test_exclusion_is_honoured_and_k_is_still_filled(catalogue):
    _, items, index = catalogue
    query = items[11]
    first = [i for i, _ in index.query(query, k=30)]
    excluded = set(first[:25])
    rest = index.query(query, k=10, exclude=excluded | {"not-an-item"})
    assert len(rest) == 10 and not {i for i, _ in rest} & excluded
    assert [i for i, _ in rest][:5] == first[25:30]


def test_query_on_small_or_empty_index_returns_what_exists():
    index = ItemIndex(2)
    assert index.query(np.array([1.0, 0.0]), k=5) == []
    index.add(["a", "b"], np.eye(2))
    index.mark_deleted("b")
    assert [i for i, _ in index.query(np.array([0.0, 1.0]), k=5)] == ["a"]
    assert index.query(np.array([0.0, 1.0]), k=5, exclude={"a"}) == []


def test_save_load_round_trip(tmp_path, catalogue):
    ids, items, _ = catalogue
    index = ItemIndex(K, capacity=600, ef=80)
    index.add(ids[:600], items[:600])
    index.mark_deleted(ids[1])
    index.save(tmp_path)
    loaded = ItemIndex.load(tmp_path)
    assert loaded.ef == 80 and loaded.capacity == index.capacity and len(loaded) == len(index)
    queries = items[:50]
    assert loaded.query_batch(queries, k=10, exclude={ids[2]}) == index.query_batch(queries, k=10, exclude={ids[2]})
    assert ids[1] not in loaded
    loaded.add(["later"], items[700:701])  # a loaded index keeps growing
    assert loaded.query(items[700], k=1)[0][0] == "later"


def test_load_rejects_mismatched_id_file(tmp_path):
    index = ItemIndex(2)
    index.add(["a", "b"], np.eye(2))
    index.save(tmp_path)
    meta = (tmp_path / "index.json").read_text().replace('"ids": ["a", "b"]', '"ids": ["a"]')
    (tmp_path / "index.json").write_text(meta)
    with pytest.raises(ValueError, match=r"index\.json"):
        ItemIndex.load(tmp_path)


def test_per_row_exclusion_applies_to_its_row_only():
    index = ItemIndex(dim=2)
    index.add(["a", "b", "c"], np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
    first, second = index.query_batch(np.array([[1.0, 0.0], [1.0, 0.0]]), k=2, exclude_per_row=[{"a"}, {"b"}])
    assert [i for i, _ in first] == ["b", "c"] and [i for i, _ in second] == ["a", "c"]
