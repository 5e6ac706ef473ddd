"""The explorer's form takes exactly the ids the API takes: an id the page let through used to come back as a 422."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from pydantic import TypeAdapter, ValidationError

from recstream.contracts.events import MAX_ID_LEN, Id
from tests.conftest import REPO

PAGE = REPO / "serving" / "static" / "explore.html"


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[str, dict[str, str | None]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "input" and (fields := dict(attrs)).get("id"):
            self.inputs[fields["id"]] = fields  # type: ignore[index]


def user_field() -> dict[str, str | None]:
    parser = _Inputs()
    parser.feed(PAGE.read_text())
    return parser.inputs["user-id"]


def form_takes(value: str) -> bool:
    """What the browser's constraint validation does: the whole value matches the pattern, within maxlength."""
    field = user_field()
    return len(value) <= int(field["maxlength"]) and re.fullmatch(field["pattern"], value) is not None  # type: ignore[arg-type]


def api_takes(value: str) -> bool:
    try:
        TypeAdapter(Id).validate_python(value)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    "value",
    ["u000042", "a" * (MAX_ID_LEN - 1), "a" * MAX_ID_LEN, "a" * (MAX_ID_LEN + 1), "a:b", "a b", "ü", "a.b-c_d"],
)
def test_the_user_field_takes_what_the_api_takes(value: str) -> None:
    assert form_takes(value) == api_takes(value)
