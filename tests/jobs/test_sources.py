from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from recstream.contracts.events import Event, Rejected, UserEvent
from recstream.jobs import sources


def test_movielens_yields_every_rating_as_a_view_and_good_ones_as_clicks(movielens: Path):
    ratings = [line.split("\t") for line in (movielens / "u.data").read_text().splitlines()]
    expected_clicks = sum(int(r[2]) >= 4 for r in ratings)
    kinds: Counter[str] = Counter()
    announced: set[str] = set()
    last_ts = 0
    for record in sources.movielens(movielens):
        value = record.value
        if isinstance(value, Event):
            kinds[value.type] += 1
            assert value.ts >= last_ts and value.user_id in announced and value.item_id in announced
            last_ts = value.ts
        else:
            kinds[record.kind] += 1
            announced.add(getattr(value, "user_id", None) or value.item_id)
    assert kinds == Counter(view=100_000, click=expected_clicks, user=943, item=1682)


def test_jsonl_reports_bad_lines_by_number(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"type":"view","user_id":"u1","item_id":"i1","ts":1000000000000}\n'
        "\n"
        "{oops\n"
        '{"kind":"item","op":"new","item_id":"i1","ts":1000000000000,"categories":["a"]}\n'
        '{"kind":"robot"}\n'
    )
    records = list(sources.read_jsonl(path, now_ms=2_000_000_000_000))
    assert [(r.kind, r.line, isinstance(r.value, Rejected)) for r in records] == [
        ("event", 1, False),
        ("event", 3, True),
        ("item", 4, False),
        ("event", 5, True),
    ]


def _folder(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / name.replace("_", ".")).write_text(text, encoding="latin-1")
    return tmp_path


GOOD = {
    "u_genre": "Action|0\nChildren's|1\n",
    "u_item": "1|Film one|01-Jan-1995||url|1|0\n2|Film two|01-Jan-1995||url|0|1\n",
    "u_user": "1|24|M|technician|85711\n2|53|F|other|94043\n",
    "u_data": "1\t1\t5\t881250949\n2\t2\t3\t881250950\n",
}


def test_a_folder_without_a_movielens_file_is_refused_when_asked_not_midway_through_the_stream(tmp_path: Path):
    folder = _folder(tmp_path, **{name: text for name, text in GOOD.items() if name != "u_data"})
    with pytest.raises(sources.SourceError, match=r"u\.data is missing: is .* a MovieLens 100K folder\?"):
        sources.movielens(folder)  # at the call: nothing has been published yet


def test_a_malformed_movielens_line_is_a_rejection_naming_its_file_and_line_and_every_valid_rating_streams(
    tmp_path: Path,
):
    folder = _folder(
        tmp_path,
        u_genre=GOOD["u_genre"],
        u_item=GOOD["u_item"] + "3|Film three|no flags\n4|Film four|x|y|2|1\n",
        u_user=GOOD["u_user"] + "3|old|M|none|00000\n",
        u_data=GOOD["u_data"] + "3\t3\t4\t881250951\n1\t2\tfive\t881250952\n4\t4\n\n1\t4\t2\t0\n",
    )
    records = list(sources.movielens(folder))
    rejected = [(r.kind, r.line, r.value.reason) for r in records if isinstance(r.value, Rejected)]
    too_early = "ts: Input should be greater than or equal to 631152000000 (epoch milliseconds: a time in seconds is"
    assert rejected == [  # first, before any valid record, so a producer reports them whatever follows
        ("item", 3, "u.item: not an id and 2 genre flags of 0 or 1"),
        ("item", 4, "u.item: not an id and 2 genre flags of 0 or 1"),
        ("user", 3, "u.user: not id|age|gender|occupation|zip"),
        ("event", 4, "u.data: not user, item, rating and time, tab-separated"),
        ("event", 5, "u.data: not user, item, rating and time, tab-separated"),
        ("event", 7, f"u.data: {too_early} that small)"),  # the contract's own reason
    ]
    assert all(isinstance(r.value, Rejected) for r in records[: len(rejected)])
    valid = [r.value for r in records if not isinstance(r.value, Rejected)]
    assert [(e.type, e.user_id, e.item_id) for e in valid if isinstance(e, Event)] == [
        ("view", "u1", "i1"),  # sorted first, the refused rating of line 7 (time 0) did not take u1's announcement
        ("click", "u1", "i1"),
        ("view", "u2", "i2"),
        ("view", "u3", "i3"),  # its item's and its user's own lines were bad: announced bare, still rated
        ("click", "u3", "i3"),
    ]
    announced = {getattr(v, "item_id", None): v for v in valid if not isinstance(v, Event)}
    assert announced["i1"].categories == ["Action"] and announced["i2"].categories == ["Childrens"]
    assert announced["i3"].categories == [] and "i4" not in announced
    assert [v.user_id for v in valid if isinstance(v, UserEvent)] == ["u1", "u2", "u3"]
    assert next(v for v in valid if isinstance(v, UserEvent)).attributes["occupation"] == "technician"
