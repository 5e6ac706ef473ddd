"""The key layout's list of per-user keys is the one the erasure deletes (recstream/store/erasure.py)."""

from __future__ import annotations

import re

from recstream.contracts import keys
from recstream.contracts.keys import USER_KEYS, USER_SESSIONS


def test_every_per_user_key_of_the_layout_is_one_the_erasure_knows():
    """A key added under ``user:<u>:`` to the table without adding it to USER_KEYS would survive an erasure."""
    named = set(re.findall(r"^``user:<u>:([a-z]+)", keys.__doc__ or "", re.MULTILINE))
    assert named == {*USER_KEYS, USER_SESSIONS.split(":")[0]}


def test_a_ranker_state_s_key_names_its_feature_set(monkeypatch):
    """States carry a feature count, not names: a feature set of the same size in another order was restored and
    averaged as if its weights weighed the new features. Its key now names the feature set's version."""
    before = keys.Keys("rs").ranker("events", 3)
    assert before == f"rs:ranker:{keys.FEATURE_VERSION}:events:3"
    monkeypatch.setattr(keys, "FEATURE_VERSION", "0123abcd")
    assert keys.Keys("rs").ranker("events", 3) not in (before, keys.Keys("rs").ranker("events", 2))
