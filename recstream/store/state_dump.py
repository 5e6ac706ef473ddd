"""Every Redis key of one prefix as plain values, and which keys two such dumps disagree on.

Rebuild checks (bench/rebuild.py) and the kill, rebuild and fault tests compare a run's state
with a clean run's this way: exact, except float vectors, the scores computed from them, and which of
exactly tied items fill a neighbour list's last places.
"""

from __future__ import annotations

import numpy as np
import orjson
import redis

from recstream.contracts.keys import Keys


def dump_state(client: redis.Redis | redis.RedisCluster, prefix: str) -> dict[str, object]:
    """Every key under ``prefix`` with its value, prefix removed, for comparing two runs; but the event ids kept
    for de-duplication (``eids:<topic>:<partition>``): they name the run's topics and hold the records' arrival
    times, which differ between two runs of the same events; and ``erased:checked``, which names the run's
    erasures topic and only the workers and the rebuild write (a replay of batches alone holds none).

    A Redis Cluster's keys lose their hash tag (``{p3}:user:u1:vec`` → ``user:u1:vec``) and the hashes and sets
    every slot keeps (``wm``, ``user:seg``, ``erased``) are merged, so a cluster run compares with a run on one
    Redis; a watermark two slots disagree on is kept as both values."""
    state: dict[str, object] = {}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        name = key.decode()[len(prefix) + 1 :]
        if name.startswith("{"):
            name = name[name.index("}") + 2 :]
        if name.startswith("eids:") or name == "erased:checked":
            continue
        kind = client.type(key).decode()
        if kind == "hash":
            _merge(state.setdefault(name, {}), client.hgetall(key))  # type: ignore[arg-type]
        elif kind == "zset":
            state[name] = client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            state.setdefault(name, set()).update(client.smembers(key))  # type: ignore[union-attr]
        elif kind == "list":
            state[name] = client.lrange(key, 0, -1)
        elif kind == "stream":  # entry ids are arrival times: two runs compare the entries' fields
            state[name] = [fields for _, fields in client.xrange(key)]
        else:
            state[name] = client.get(key)
    return state


def settled(client: redis.Redis | redis.RedisCluster, keys: Keys) -> bool:
    """Whether the rankings are final: no rescore pass open and no item waiting for its per-segment scores
    (apply_batch.lua, steps 4 and 4b). A worker finishes both once idle for a second, so a run's state compares with
    another's once every event is applied *and* this holds."""
    return not client.exists(keys("rescore")) and not client.scard(keys("segments:rescore"))


def _merge(into: dict[bytes, object], fields: dict[bytes, bytes]) -> None:
    """Add one slot's fields of a hash; a field two slots hold with different values keeps both (so it differs)."""
    for field, value in fields.items():
        into[field] = value if into.get(field, value) == value else (into[field], value)


def same_value(key: str, a: object, b: object) -> bool:
    """Exact, except float vectors (1e-6: the batched solve's rounding depends on its batch) and the ranked
    lists of neighbours (:func:`same_neighbours`)."""
    if key.endswith(":vec"):
        return np.allclose(np.frombuffer(a, "<f4"), np.frombuffer(b, "<f4"), rtol=0, atol=1e-6)
    if key.endswith((":cand", ":similar")):
        return same_neighbours(orjson.loads(a), orjson.loads(b))  # type: ignore[arg-type]
    return a == b


def same_neighbours(ours: list[list], theirs: list[list], atol: float = 1e-4) -> bool:
    """Two top-k lists of ``[item, score, *rest]`` (a user's candidates, an item's similar items): as long, and the
    same items with the same scores (to ``atol``: they come from the vectors) and rest (a candidate's "because"),
    except that the last places may name different items of the last score.

    Why the exception: items with one vector (new items with the same categories share a content vector) tie
    exactly, and which of them hnswlib returns depends on its graph, so on the order the worker's item feed added
    the items: two workers, or a restarted one, read the items topic's partitions interleaved differently.

    >>> same_neighbours([["a", 0.9], ["b", 0.5], ["c", 0.5]], [["a", 0.9], ["c", 0.5], ["d", 0.5]])
    True
    >>> same_neighbours([["a", 0.9], ["b", 0.5]], [["d", 0.9], ["b", 0.5]])
    False
    """
    mine, other = ({entry[0]: (entry[1], entry[2:]) for entry in side} for side in (ours, theirs))
    if len(mine) != len(other):
        return False
    common = mine.keys() & other.keys()
    if any(abs(mine[i][0] - other[i][0]) > atol or mine[i][1] != other[i][1] for i in common):
        return False
    last = min((score for score, _ in mine.values()), default=0.0)
    return all(abs(side[i][0] - last) <= atol for side in (mine, other) for i in side.keys() - common)


def differing_keys(ours: dict[str, object], theirs: dict[str, object]) -> list[str]:
    """Keys of two :func:`dump_state` dumps that only one holds or whose values differ (see :func:`same_value`)."""
    changed = [key for key in ours if key in theirs and not same_value(key, ours[key], theirs[key])]
    return sorted(ours.keys() ^ theirs.keys()) + changed
