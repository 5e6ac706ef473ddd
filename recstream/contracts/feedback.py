"""Feedback types: which event ``type`` names exist, and what each one does.

A type has a **role**: ``impression`` (the item was shown: a weak positive), ``positive`` (the user acted on
it: refreshes their vector and candidates) or ``negative`` (the user rejected it: a negative observation
in the user step, and the item leaves their feed as any seen item does). Its **weight** is what one event
adds to r_ui in iALS (models/als.event_weights: c_ui = 1 + α·|r_ui|, p_ui = 1 when r_ui ≥ 0, p_ui = 0 for a
negative); a **valued** type (a rating) multiplies the weight by the event's ``value``, which must lie in
the type's ``value_range``. ``ctr`` says whether the type counts toward CTR: an impression type as a view,
a positive type as a click (smoothed CTR, popular lists, the bandit, trends, pool graduation).

The set is a setting (``RECSTREAM_FEEDBACK_TYPES``, a JSON object name → type, which replaces the whole
default set) and the one source of truth: the workers, ``POST /v1/events``, ``recstream import`` and
``train`` validate every event's ``type`` against it, so an unknown type goes to the dead-letter topic
(or is refused with 422) with a reason naming the configured types.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, RootModel, StringConstraints, model_validator

TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
"""A type name: short, lower case and safe, since it is a Prometheus label value of the event counters."""
MAX_TYPES = 32
MAX_WEIGHT = 1_000.0
MAX_VALUE = 1_000_000.0
"""The largest weight and valued-type value: one event then adds at most 10⁹ to r_ui, and iALS' confidence
1 + α·|r_ui| (α ≤ 10⁴, models/als.py) stays finite in float32, where a weight of 10⁴⁰ did not. A fit at the extremes
can still diverge (its float32 sums); ``recstream train`` then says what to lower (models/als.FitError)."""
Role = Literal["impression", "positive", "negative"]
CTR_LABELS = ("view", "click")
"""What a type counted in CTR is, by its column: a view (0) or a click (1)."""
TypeName = Annotated[str, StringConstraints(pattern=TYPE_PATTERN)]


class FeedbackType(BaseModel):
    """One type's role, iALS weight, CTR part and (for a valued type) the range of its value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role = Field(description="impression (shown), positive (acted on) or negative (rejected)")
    weight: float = Field(
        ge=0,
        le=MAX_WEIGHT,
        allow_inf_nan=False,
        description="what one event adds to r_ui (times its value for a valued type); > 0 unless an impression",
    )
    ctr: bool = Field(False, description="counts toward CTR: an impression as a view, a positive as a click")
    value_range: tuple[float, float] | None = Field(
        None, description="[min, max] of the event's value, 0 < min < max ≤ 10⁶ (a rating's stars); None: no value"
    )

    @model_validator(mode="after")
    def _consistent(self) -> FeedbackType:
        if self.role != "impression" and self.weight <= 0:
            raise ValueError(f"a {self.role} type needs a weight > 0 (only an impression may weigh 0)")
        if self.role == "negative" and self.ctr:
            raise ValueError("a negative type counts toward CTR neither as a view nor as a click: set ctr false")
        if self.value_range is not None:
            low, high = self.value_range
            if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high <= MAX_VALUE):
                raise ValueError(
                    f"value_range must be finite with 0 < min < max ≤ {MAX_VALUE:g}, got {list(self.value_range)}"
                )
        return self


class FeedbackTypes(RootModel[dict[TypeName, FeedbackType]]):
    """The configured set, with what the hot paths look up per event precomputed (dicts and sets).

    >>> t = DEFAULT_FEEDBACK
    >>> t.signed_weight["click"], t.signed_weight["dislike"], sorted(t.views), sorted(t.clicks)
    (4.0, -4.0, ['view'], ['click'])
    >>> t.metric_label["click"], t.metric_label["purchase"]
    ('click', 'purchase')
    >>> print(t.problem("rating", 6.0))
    value: 6.0 is outside rating's value_range [1.0, 5.0]
    >>> t.problem("share", None)
    "type: unknown feedback type 'share' (configured: view, click, like, add_to_cart, purchase, rating, dislike)"
    """

    model_config = ConfigDict(frozen=True)
    _signed: dict[str, float] = PrivateAttr(default_factory=dict)
    _ctr_column: dict[str, int] = PrivateAttr(default_factory=dict)
    _label: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _usable(self) -> FeedbackTypes:
        types = self.root
        if not 0 < len(types) <= MAX_TYPES:
            raise ValueError(f"configure 1 to {MAX_TYPES} feedback types, got {len(types)}")
        for role in ("impression", "positive"):
            if not any(t.role == role and t.ctr for t in types.values()):
                raise ValueError(f"at least one {role} type must count toward CTR (ctr true): CTR needs both")
        for name, role in (("view", "impression"), ("click", "positive")):
            if name in types and not (types[name].role == role and types[name].ctr):
                raise ValueError(f"a type named {name} must be a CTR {role} type: metrics read {name} as CTR's")
        return self

    def model_post_init(self, context: object) -> None:
        self._signed = {name: -t.weight if t.role == "negative" else t.weight for name, t in self.root.items()}
        self._ctr_column = {name: int(t.role == "positive") for name, t in self.root.items() if t.ctr}
        self._label = {name: CTR_LABELS[self._ctr_column[name]] if t.ctr else name for name, t in self.root.items()}

    @property
    def signed_weight(self) -> dict[str, float]:
        """name → its weight, negated for a negative type: the r_ui sign convention of models/als.py."""
        return self._signed

    @property
    def ctr_column(self) -> dict[str, int]:
        """name → 0 (counts as a view) or 1 (counts as a click); types outside CTR are absent."""
        return self._ctr_column

    @property
    def metric_label(self) -> dict[str, str]:
        """name → the ``type`` label of the event counters: ``view`` or ``click`` for a type counted in CTR (so the
        CTR rules and panels divide the same counts as the workers, whatever the types are called), else its name."""
        return self._label

    @property
    def views(self) -> frozenset[str]:
        return frozenset(name for name, col in self._ctr_column.items() if col == 0)

    @property
    def clicks(self) -> frozenset[str]:
        return frozenset(name for name, col in self._ctr_column.items() if col == 1)

    def role(self, name: str) -> Role:
        return self.root[name].role

    def with_role(self, *roles: Role) -> frozenset[str]:
        """The names of the types with one of ``roles``."""
        return frozenset(name for name, t in self.root.items() if t.role in roles)

    def problem(self, name: str, value: float | None) -> str | None:
        """Why an event of type ``name`` with ``value`` is invalid under this set (None: it is valid)."""
        kind = self.root.get(name)
        if kind is None:
            return f"type: unknown feedback type {name!r} (configured: {', '.join(self.root)})"
        if kind.value_range is None:
            return None if value is None else f"value: {name} events carry no value"
        low, high = kind.value_range
        if value is None:
            return f"value: {name} events need a value in [{low}, {high}]"
        if not low <= value <= high:
            return f"value: {value} is outside {name}'s value_range [{low}, {high}]"
        return None


DEFAULT_FEEDBACK = FeedbackTypes(
    {
        "view": FeedbackType(role="impression", weight=1.0, ctr=True),
        "click": FeedbackType(role="positive", weight=4.0, ctr=True),
        "like": FeedbackType(role="positive", weight=4.0),
        "add_to_cart": FeedbackType(role="positive", weight=8.0),
        "purchase": FeedbackType(role="positive", weight=12.0),
        "rating": FeedbackType(role="positive", weight=1.0, value_range=(1.0, 5.0)),
        "dislike": FeedbackType(role="negative", weight=4.0),
    }
)
"""view and click weigh what they always did (1 and 4, both in CTR), so every earlier result keeps its meaning.
The others are a starting point, not tuned on data: like as sure as a click, a cart 2×, a purchase 3×; a rating
weighs its stars (1–5); a dislike is a negative observation as sure as a click. None of them counts toward CTR:
they happen on an item's page rather than on a feed's impression, and would push a CTR past 1."""
