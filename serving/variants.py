"""Experiment arms: which variant of ``settings.experiment`` a user is in, and the settings it blends with.

Under an experiment (recstream/contracts/experiments.py), :class:`Variants` gives each user their
variant's settings, which the page is blended with, and the label the response carries; events
reported without a variant are stamped with their user's.
"""

from __future__ import annotations

from dataclasses import dataclass

from recstream.contracts.events import Event
from recstream.contracts.settings import Settings


@dataclass(frozen=True, slots=True)
class Arm:
    """The settings a user's page is blended with, and the ``"<experiment>:<variant>"`` label (None: no experiment)."""

    settings: Settings
    label: str | None = None


class Variants:
    """Each variant's settings built once (the global ones with its overrides); ``assign`` is a hash per request."""

    def __init__(self, settings: Settings) -> None:
        self.experiment = settings.experiment
        self._default = Arm(settings)
        self._arms = {
            v.name: Arm(settings.replace(**v.overrides()), self.experiment.label(v))
            for v in (self.experiment.variants if self.experiment else ())
        }

    def assign(self, user_id: str) -> Arm:
        if self.experiment is None:
            return self._default
        return self._arms[self.experiment.assign(user_id).name]

    def stamp(self, events: list[Event]) -> list[Event]:
        """Events reported without a variant get their user's, so a client that only echoes what it was
        shown is counted in its arm; an explicit variant (another experiment's, say) is kept."""
        if self.experiment is None:
            return events
        return [
            e if e.variant is not None else e.model_copy(update={"variant": self.assign(e.user_id).label})
            for e in events
        ]
