"""Online experiments (A/B): the configuration and who sees which variant (statistics: jobs/experiment_stats).

Both sides import this module: the reader assigns a user to a variant and blends with that variant's
settings, clients carry the label ``"<experiment>:<variant>"`` into their events (``Event.variant``),
the workers count views and clicks per variant (bounded Prometheus labels, :func:`metric_labels`),
and ``recstream experiment report`` reads the events log back and compares the variants.

Assignment is a pure function of (salt, user id): no state to store or replicate, the same answer
in every reader replica, and a new salt reshuffles everybody (a fresh experiment does not inherit
the last one's split).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model, model_validator
from pydantic.fields import FieldInfo

from recstream.contracts.blend_settings import BlendSettings
from recstream.contracts.events import LABEL_PATTERN

MAX_VARIANTS = 8
"""Bounds the label values of the per-variant metrics (with "other" and "none")."""
Label = Annotated[str, StringConstraints(pattern=f"^{LABEL_PATTERN}$")]
BLEND_SETTINGS = (
    "share_personal",
    "share_popular",
    "share_fresh",
    "share_explore",
    "explore_max_share",
    "explore_policy",
    "explore_epsilon",
    "explore_gate",
    "popular_personal_head",
    "ranker",
    "ranker_depth",
    "ranker_personal_depth",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Arm(_Frozen):
    """One arm: its share of users and the blend settings it overrides (unset ones keep the global value)."""

    name: Label
    weight: float = Field(gt=0, le=1, description="share of users; the variants' weights sum to 1")

    def overrides(self) -> dict[str, object]:
        """The settings this variant changes, for ``settings.replace(**...)``."""
        return {name: getattr(self, name) for name in BLEND_SETTINGS if getattr(self, name) is not None}


def _unset_or(name: str) -> tuple[object, FieldInfo]:
    """A blend setting as a variant's field: its type and bounds (a looser bound would pass the experiment's
    validation and fail the reader's ``replace``), or None, the global value."""
    setting = BlendSettings.model_fields[name]
    return setting.annotation | None, FieldInfo.merge_field_infos(setting, default=None)


Variant = create_model(
    "Variant",
    __base__=_Arm,
    __module__=__name__,
    __doc__=_Arm.__doc__,
    **{name: _unset_or(name) for name in BLEND_SETTINGS},
)
"""An arm: ``name``, ``weight`` and each of :data:`BLEND_SETTINGS`, optional, typed and bounded as its setting."""


class Experiment(_Frozen):
    """A named experiment: a salt and 2..MAX_VARIANTS variants, the first one the control unless named.

    >>> e = Experiment(name="blend", salt="s1", variants=[Variant(name="a", weight=0.5), Variant(name="b", weight=0.5)])
    >>> e.assign("u1").name, e.label(e.assign("u1"))
    ('a', 'blend:a')
    """

    name: Label
    salt: Label = Field(description="change it to reshuffle users for a new experiment")
    variants: Annotated[list[Variant], Field(min_length=2, max_length=MAX_VARIANTS)]
    control: Label | None = Field(None, description="the baseline variant (default: the first)")

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        total = math.fsum(v.weight for v in self.variants)
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"variant weights must sum to 1, got {total:g}")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control {self.control!r} is not one of the variants {names}")
        return self

    @property
    def control_name(self) -> str:
        return self.control or self.variants[0].name

    def assign(self, user_id: str) -> Variant:
        """The user's variant: :func:`bucket` of the salted id, placed on the cumulative weights."""
        return self.variants[pick([v.weight for v in self.variants], bucket(user_id, self.salt))]

    def label(self, variant: Variant) -> str:
        return f"{self.name}:{variant.name}"


def bucket(user_id: str, salt: str) -> float:
    """A uniform number in [0, 1) from ``salt:user_id``: the first 8 bytes of BLAKE2b over 2⁶⁴.

    A cryptographic hash so that ids with a common prefix or sequential numbers spread evenly.

    >>> bucket("u1", "s1")
    0.06864128159640609
    >>> bucket("u1", "s2") != bucket("u1", "s1")
    True
    """
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def pick(weights: list[float], u: float) -> int:
    """The index i with cumsum(w)[i−1] ≤ u < cumsum(w)[i]; the last one when rounding leaves u past the sum.

    >>> [pick([0.2, 0.5, 0.3], u) for u in (0.0, 0.19, 0.2, 0.69, 0.7, 0.999)]
    [0, 0, 1, 1, 2, 2]
    """
    return min(bisect.bisect_right(list(itertools.accumulate(weights)), u), len(weights) - 1)


def metric_labels(experiment: Experiment | None, variant: str | None) -> tuple[str, str]:
    """Bounded (experiment, variant) labels: configured values as they are, anything else "other".

    >>> e = Experiment(name="x", salt="s", variants=[Variant(name="a", weight=0.5), Variant(name="b", weight=0.5)])
    >>> [metric_labels(e, v) for v in ("x:a", "x:zz", "y:a", None)]
    [('x', 'a'), ('x', 'other'), ('other', 'other'), ('none', 'none')]
    """
    if variant is None:
        return "none", "none"
    name, _, arm = variant.partition(":")
    if experiment is None or name != experiment.name:
        return "other", "other"
    return name, arm if any(v.name == arm for v in experiment.variants) else "other"
