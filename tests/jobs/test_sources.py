from __future__ import annotations

from collections import Counter
from pathlib import Path

from recstream.contracts.events import Event, Rejected
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
