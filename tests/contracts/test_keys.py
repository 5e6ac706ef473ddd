"""The key layout's list of per-user keys is the one the erasure deletes (recstream/store/erasure.py)."""

from __future__ import annotations

import re

from recstream.contracts import keys
from recstream.contracts.keys import USER_KEYS, USER_SESSIONS


def test_every_per_user_key_of_the_layout_is_one_the_erasure_knows():
    """A key added under ``user:<u>:`` to the table without adding it to USER_KEYS would survive an erasure."""
    named = set(re.findall(r"^``user:<u>:([a-z]+)", keys.__doc__ or "", re.MULTILINE))
    assert named == {*USER_KEYS, USER_SESSIONS.split(":")[0]}
