"""The base of every settings section (recstream.contracts.settings): frozen, strict, no infinity."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """One group of settings. ``variables`` names the fields whose variable is not the field's own name."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # no setting means infinity
    variables: ClassVar[Mapping[str, str]] = {}
