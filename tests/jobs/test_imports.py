"""``recstream import``: files made here (and MovieLens' raw ratings) through the real CLI and Kafka, read back."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import pytest

from recstream.contracts.events import Event, Rejected, decode, encode
from recstream.contracts.settings import Settings, load_settings
from recstream.eventlog.log import open_log, read, whole_topic
from recstream.jobs import imports
from recstream.jobs.imports import ImportSpec, ImportSpecError, count_rows, file_rows
from tests.shell.test_cli_errors import cli
from tests.shell.test_cli_options import run as run_cli

T0_S = 1_700_000_000
NOW_MS = 1_800_000_000_000


async def on_topic(settings: Settings, topic: str, kind: str) -> list:
    found: list = []
    async with open_log(settings) as consumer:
        async for chunk in read(consumer, await whole_topic(consumer, topic), 10_000):
            for message in chunk:
                found += decode(message.value, kind, 2**53)[0]  # type: ignore[arg-type]
    return found


def test_a_rating_is_a_view_and_from_click_rating_on_also_a_click():
    spec = ImportSpec.parse("interactions", ["user=u", "item=i", "ts=t"], ts_unit="s", click_rating=4)
    kinds = {
        rating: [e.type for e in spec.records({"u": "a", "i": "b", "t": str(T0_S), "rating": rating}, NOW_MS)]
        for rating in ("3.9", "4", "4.1")
    }
    assert kinds == {"3.9": ["view"], "4": ["view", "click"], "4.1": ["view", "click"]}


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ({"u": "a", "i": "b"}, "ts: no column 't'"),
        ({"u": "a", "i": "b", "t": "noon"}, "ts: expected a number"),
        ({"u": "a b", "i": "b", "t": str(T0_S)}, "user_id: String should match pattern"),
        ({"u": "a", "i": "b", "t": "1"}, "ts: Input should be greater than or equal to"),
        ({"u": "a", "i": "b", "t": str(T0_S), "rating": "five"}, "rating: expected a finite number"),
        ({"u": "a", "i": "b", "t": "nan"}, "ts: expected a finite number of s, got nan"),  # int(nan) raised
        ({"u": "a", "i": "b", "t": "inf"}, "ts: expected a finite number of s, got inf"),
        ({"u": "a", "i": "b", "t": "1e306"}, "ts: expected a finite number of s"),  # finite, but not in ms
        ({"u": "a", "i": "b", "t": str(T0_S), "rating": "nan"}, "rating: expected a finite number"),
        ({"u": "a", "i": "b", "t": str(T0_S)}, "type: no column 'event'"),  # mapped, absent: it raised KeyError
    ],
)
def test_a_row_that_makes_no_event_says_why(row, says):
    maps = ["user=u", "item=i", "ts=t"] + (["type=event"] if says.startswith("type") else [])
    result = ImportSpec.parse("interactions", maps, ts_unit="s").records(row, NOW_MS)
    assert isinstance(result, Rejected) and result.reason.startswith(says), result


@pytest.mark.parametrize(
    ("categories", "result"),
    [
        (None, ["drama"]),
        (["a"], ["a", "drama"]),
        ("a|b", ["a", "b", "drama"]),
        (5, "categories: expected a list or a '|'-separated text, got int"),
    ],
)
def test_one_hot_category_columns_join_the_categories_a_typed_row_gives(categories, result):
    """A JSONL item whose ``categories`` is null or no list once stopped the whole import (a TypeError)."""
    spec = ImportSpec.parse("items", category_columns=["drama"])
    made = spec.records({"item_id": "i1", "categories": categories, "drama": 1}, NOW_MS)
    if isinstance(result, str):
        assert isinstance(made, Rejected) and made.reason == result
    else:
        assert not isinstance(made, Rejected) and made[0].categories == result


@pytest.mark.parametrize(
    ("row", "result"),
    [
        ({"features": {"price": 3.5}, "f_len": "2"}, {"price": 3.5, "len": 2.0}),
        ({"features": None}, {}),
        ({"features": "free text", "f_len": "2"}, {"len": 2.0}),
        ({"f_len": None, "f_size": 3}, {"size": 3.0}),
        ({"features": {"price": None, "weight": 2}, "f_len": None}, {"weight": 2.0}),
    ],
    ids=["object", "null", "text", "null column", "null in the object"],
)
def test_a_typed_features_object_is_imported_with_the_feature_columns_and_any_other_value_ignored(row, result):
    """A JSONL or Parquet item's ``features`` object was dropped without a word (the bulk route kept it); a null (a
    missing struct) or a text column of that name was ignored, as other columns are, and still is; a null in a
    feature column (a sparse Parquet column) is an absent feature, as an empty CSV cell is, not a refused row, and so
    is a null in the object (a Parquet struct has a field for every feature, null where a row lacks it)."""
    made = ImportSpec.parse("items").records({"item_id": "i1", **row}, NOW_MS)
    assert not isinstance(made, Rejected) and made[0].features == result, made


@pytest.mark.parametrize(
    ("age", "read"),
    [
        ("34", 34),
        ("34.5", 34.5),
        ("²", "²"),  # a digit int() refuses (it raised): the attribute stays text
        (str(-(2**63) - 1), str(-(2**63) - 1)),  # past a signed 64-bit integer: text, an id (encode raised on it)
        (str(-(2**63)), -(2**63)),
        (str(2**63 - 1), 2**63 - 1),
        (str(2**63), str(2**63)),
        ("9" * 30, "9" * 30),  # an account number: text, not the float 1e30 that lost its digits
        ("0" * 4_400 + "34", 34),  # int() refuses over 4,300 digits, leading zeros too
        ("9" * 4_400, None),  # text, too long for an attribute: the row is refused
        ("1e999", "1e999"),
        ("--5", "--5"),  # two signs: text (int() raised)
        ("-5", -5),
    ],
    ids=["int", "float", "superscript", "-2^63-1", "-2^63", "2^63-1", "2^63", "30 digits", "zeros", "4400 digits",
         "infinite", "two signs", "one"],
)  # fmt: skip
def test_a_user_attribute_is_a_number_only_when_it_is_a_finite_one_within_64_bits(age, read):
    result = ImportSpec.parse("users", ["user=u"]).records({"u": "a", "age": age}, NOW_MS)
    if read is None:
        assert isinstance(result, Rejected) and "at most 256 characters" in result.reason, result
    else:
        assert not isinstance(result, Rejected) and result[0].attributes["age"] == read, result
        assert decode(encode(result[0]), "user", NOW_MS)[0] == result


@pytest.mark.parametrize("row", [{"u": "u7", "age": "", "gender": ""}, {"u": "u7", "age": None}, {"u": "u7"}])
def test_a_user_row_with_only_an_id_is_a_bad_row_not_a_record_that_erases_the_users_attributes(row):
    """Published with no attributes under the user's key, it replaced their attributes record once compacted."""
    result = ImportSpec.parse("users", ["user=u"]).records(row, NOW_MS)
    assert isinstance(result, Rejected) and result.reason == "no attributes: every column but u is empty", result
    kept = ImportSpec.parse("users", ["user=u"]).records({**row, "zip": "02139"}, NOW_MS)
    assert not isinstance(kept, Rejected) and kept[0].attributes == {"zip": 2139}, kept


@pytest.mark.parametrize("rating", [math.nan, math.inf, -math.inf])
def test_a_click_rating_that_is_not_a_finite_number_is_refused(rating: float):
    """NaN compared false with every rating (every click a view, silently); inf made them all views, -inf clicks."""
    with pytest.raises(ImportSpecError, match=f"--click-rating must be a finite number, got {rating}"):
        ImportSpec.parse("interactions", click_rating=rating)
    assert run_cli("import", "README.md", "--click-rating", str(rating)).exit_code == 2


@pytest.mark.parametrize(
    ("kind", "maps", "says"),
    [
        ("events", [], "--kind must be one of interactions, items, users"),
        ("interactions", ["colour=c"], "interactions have no field colour"),
        ("items", ["user=u"], "items have no field user_id"),
        ("interactions", ["user"], "expected --map FIELD=COLUMN, got 'user'"),
    ],
)
def test_an_import_that_cannot_work_is_refused_before_reading(kind, maps, says):
    with pytest.raises(ImportSpecError, match=says):
        ImportSpec.parse(kind, maps)


INTERACTIONS = f"""uid,movie_id,timestamp,event
u1,m1,{T0_S},purchase
u2,m2,{T0_S + 1},impression
u3,m3,{T0_S + 2},hover
u 4,m4,{T0_S + 3},purchase
u5,m5,later,purchase
u6,m6,{T0_S + 5}
u1,m2,{T0_S + 6},impression
"""


@pytest.mark.parametrize(
    ("cells", "result"),
    [
        ({"event": "rating", "stars": "4.5"}, ("rating", 4.5)),
        ({"event": "stars5", "stars": "5"}, ("rating", 5.0)),
        ({"event": "dislike", "stars": ""}, ("dislike", None)),
        ({"event": "rating", "stars": "6"}, "value: 6.0 is outside rating's value_range [1.0, 5.0]"),
        ({"event": "rating", "stars": ""}, "value: rating events need a value in [1.0, 5.0]"),
        ({"event": "rating", "stars": "lots"}, "value: expected a finite number, got 'lots'"),
        ({"event": "like", "stars": "2"}, "value: like events carry no value"),
    ],
)
def test_a_value_column_gives_valued_types_their_value(cells, result):
    spec = ImportSpec.parse("interactions", ["type=event", "value=stars"], type_maps=["stars5=rating"])
    got = spec.records({"user_id": "u1", "item_id": "i1", "ts": str(T0_S * 1000), **cells}, T0_S * 1000)
    if isinstance(result, str):
        assert isinstance(got, Rejected) and got.reason == result
    else:
        [event] = got
        assert (event.type, event.value) == result


@pytest.mark.integration
async def test_a_csv_of_interactions_reaches_kafka_mapped_with_bad_rows_named(isolated_settings, tmp_path: Path):
    path = tmp_path / "interactions.csv"
    path.write_text(INTERACTIONS)
    maps = ["--map", "user=uid", "--map", "item=movie_id", "--map", "ts=timestamp", "--map", "type=event"]
    types = ["--type-map", "purchase=click", "--type-map", "impression=view"]
    done = cli(isolated_settings, "import", str(path), *maps, *types, "--ts-unit", "s")
    assert done.returncode == 0, done.stderr
    skipped = [line for line in done.stderr.splitlines() if line.startswith("skipped")]
    assert skipped == [
        "skipped line 4: type: unknown feedback type 'hover' (configured: view, click, like, add_to_cart, purchase, "
        "rating, dislike)",
        "skipped line 5: user_id: String should match pattern '^[A-Za-z0-9_.\\-]+$'",
        "skipped line 6: ts: expected a number, got 'later'",
        "skipped line 7: 3 values for 4 columns",
    ]
    assert "3 events from 7 rows published" in done.stderr
    events = await on_topic(isolated_settings, isolated_settings.kafka.events_topic, "event")
    got = sorted((e.user_id, e.item_id, e.ts, e.type) for e in events)
    ms = T0_S * 1000
    assert got == [("u1", "m1", ms, "click"), ("u1", "m2", ms + 6000, "view"), ("u2", "m2", ms + 1000, "view")]
    again = cli(isolated_settings, "import", str(path), *maps, *types, "--ts-unit", "s")
    assert again.returncode == 0
    ids = Counter(e.event_id for e in await on_topic(isolated_settings, isolated_settings.kafka.events_topic, "event"))
    assert sorted(ids.values()) == [2, 2, 2] and set(ids) == {e.event_id for e in events}, "the same ids again"


@pytest.mark.integration
async def test_items_with_one_hot_categories_and_users_with_attributes(isolated_settings, tmp_path: Path):
    items = tmp_path / "u.item"
    items.write_text(f"1|Toy Story|0|1|1|{T0_S}\n2|Heat|1|0|0|{T0_S + 1}\n3|Broken|1|0|maybe|\n")
    columns = ["--columns", "item,title,Action,Animation,Comedy,created", "--map", "created_ts=created"]
    flags = ["--category-columns", "Action,Animation,Comedy", "--ts-unit", "s"]
    done = cli(isolated_settings, "import", str(items), "--kind", "items", "--delimiter", "|", *columns, *flags)
    assert done.returncode == 0, done.stderr
    assert "skipped line 3: Comedy: expected true or false, got 'maybe'" in done.stderr
    published = await on_topic(isolated_settings, isolated_settings.kafka.items_topic, "item")
    assert [(i.item_id, i.categories, i.created_ts) for i in published] == [
        ("1", ["Animation", "Comedy"], T0_S * 1000),
        ("2", ["Action"], (T0_S + 1) * 1000),
    ]
    users = tmp_path / "users.jsonl"
    users.write_text('{"id": "u1", "age": 34, "gender": "F"}\n{"age": 20}\n{"id": "u2", "zip": "02139"}\n')
    done = cli(isolated_settings, "import", str(users), "--kind", "users", "--map", "user=id")
    assert done.returncode == 0, done.stderr
    assert "skipped line 2: user_id: no column 'id'" in done.stderr
    published = await on_topic(isolated_settings, isolated_settings.kafka.users_topic, "user")
    assert [(u.user_id, u.attributes) for u in published] == [("u1", {"age": 34, "gender": "F"}), ("u2", {"zip": 2139})]


def test_parquet_rows_are_numbered_and_typed(tmp_path: Path):
    """Needs the parquet extra, which ./dev setup installs: without it this fails, it never skips."""
    import pyarrow as pa
    import pyarrow.parquet as parquet

    path = tmp_path / "events.parquet"
    table = pa.table({"user": ["a", "b"], "item": ["x", "y"], "ts": [T0_S * 1000, 5], "type": ["click", "view"]})
    parquet.write_table(table, path)
    spec = ImportSpec.parse("interactions", ["user=user", "item=item"])
    results = [(n, spec.records(row, NOW_MS)) for n, row in file_rows(path, "parquet")]
    assert [n for n, _ in results] == [1, 2]
    assert isinstance(results[0][1][0], Event) and results[0][1][0].ts == T0_S * 1000  # type: ignore[index]
    assert isinstance(results[1][1], Rejected) and results[1][1].reason.startswith("ts: Input should be greater")


@pytest.mark.integration
async def test_movielens_raw_ratings_import_as_the_benchmarks_source_reads_them(isolated_settings, movielens: Path):
    """u.data as it is (tab-separated user, item, rating, seconds): every rating a view, 4 and 5 also a click,
    published in time order — the events of recstream.jobs.sources.movielens but for its id prefixes."""
    done = cli(isolated_settings, "import", str(movielens / "u.data"), "--delimiter", "tab",
               "--columns", "user,item,rating,ts", "--ts-unit", "s", "--sort")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "0 bad rows skipped" in done.stderr
    expected: Counter[tuple[str, str, int, str]] = Counter()
    for line in (movielens / "u.data").read_text().splitlines():
        user, item, rating, ts = line.split("\t")
        expected[(user, item, int(ts) * 1000, "view")] += 1
        if int(rating) >= 4:
            expected[(user, item, int(ts) * 1000, "click")] += 1
    events = await on_topic(isolated_settings, isolated_settings.kafka.events_topic, "event")
    assert Counter((e.user_id, e.item_id, e.ts, e.type) for e in events) == expected
    by_user: dict[str, list[int]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e.ts)
    assert all(ts == sorted(ts) for ts in by_user.values()), "each user's events in time order"


def test_an_items_created_ts_too_large_for_a_float_is_a_refused_row_not_an_overflow():
    """A 400-digit created_ts cell read as an int, and the finiteness check raised OverflowError out of the import."""
    result = ImportSpec.parse("items").records({"item_id": "i1", "created_ts": "9" * 400}, NOW_MS)
    assert isinstance(result, Rejected) and result.reason.startswith("created_ts: expected a finite number"), result


def test_a_file_that_is_not_parquet_is_refused_in_one_line_before_anything_is_read(tmp_path: Path):
    """A CSV renamed .parquet raised pyarrow's ArrowInvalid out of ``recstream import`` with a traceback."""
    path = tmp_path / "items.parquet"
    path.write_text("item_id,categories\ni1,a\n")
    with pytest.raises(ImportSpecError, match=r"cannot read .*items\.parquet as Parquet: .*magic bytes"):
        count_rows(path, "parquet")


def test_a_parquet_map_of_features_and_nulls_in_sparse_item_columns_are_imported(tmp_path: Path):
    """pyarrow reads a map<string, double> column as (key, value) pairs, which were ignored, so a re-import wiped the
    items' features; a null in a sparse categories, available or created_ts column refused the whole row."""
    import pyarrow as pa
    import pyarrow.parquet as parquet

    path = tmp_path / "items.parquet"
    features = pa.array([[("price", 3.5), ("len", 2.0)], []], type=pa.map_(pa.string(), pa.float64()))
    table = pa.table(
        {
            "item_id": ["i1", "i2"],
            "features": features,
            "categories": pa.array(["a|b", None]),
            "available": pa.array([None, False]),
            "created_ts": pa.array([None, T0_S * 1000], type=pa.int64()),
        }
    )
    parquet.write_table(table, path)
    made = [ImportSpec.parse("items").records(row, NOW_MS) for _, row in file_rows(path, "parquet")]
    assert not any(isinstance(m, Rejected) for m in made), made
    (first,), (second,) = made  # type: ignore[misc]
    assert (first.features, first.categories, first.available, first.created_ts) == (
        {"price": 3.5, "len": 2.0},
        ["a", "b"],
        True,
        None,
    )
    assert (second.features, second.categories, second.available) == ({}, [], False)


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What ``recstream import`` (run in process) hands the producer, each record as the bytes Kafka would get: a
    producer that encodes as EventProducer does (so an unencodable record raises as it would) and sends nowhere."""
    sent: list[bytes] = []

    class Producer:
        def __init__(self, settings: Settings) -> None:
            pass

        async def __aenter__(self) -> Producer:
            return self

        async def __aexit__(self, *exc: object) -> None:
            pass

        async def send_events(self, events: list[Event]) -> None:
            sent.extend(encode(event) for event in events)

        async def send_item(self, item: object) -> None:
            sent.append(encode(item))  # type: ignore[arg-type]

        send_user = send_item

    monkeypatch.setattr(imports, "EventProducer", Producer)
    return sent


def test_users_with_numbers_past_64_bits_are_imported_as_text_and_the_rows_after_them_too(tmp_path, published):
    """An attribute of 2**63 became an int that orjson could not write: a TypeError traceback, the rest unpublished."""
    path = tmp_path / "users.csv"
    values = [2**63, 2**63 - 1, -(2**63) - 1, -(2**63)]
    path.write_text("user_id,acct\n" + "".join(f"u{k},{v}\n" for k, v in enumerate(values)))
    done = run_cli("import", str(path), "--kind", "users")
    assert done.exit_code == 0 and "4 users from 4 rows published" in done.output, done.output
    read = [decode(body, "user", NOW_MS)[0][0].attributes["acct"] for body in published]
    assert read == [str(2**63), 2**63 - 1, str(-(2**63) - 1), -(2**63)]


@pytest.mark.parametrize(
    ("text", "says", "published_rows"),
    [
        (f"u1,i1,{T0_S}000\nu2,i2,{T0_S}000\n", None, 2),
        (f'u1,i1,{T0_S}000\nu2,"see "manual" p.3,{T0_S}000\nu3,i3,{T0_S}000\n",x,{T0_S}000\n',
         "line 3: csv: ',' expected after '\"'; reading stopped here: the rest of the file (2 more lines) was not read",
         1),
        (f"u1,i1,{T0_S}000\nu2,\"i2\nu3,i3,{T0_S}000\n",
         "line 3: csv: unexpected end of data; reading stopped here: the rest of the file (1 more line) was not read",
         1),
    ],
    ids=["whole", "stray quote", "unclosed quote"],
)  # fmt: skip
def test_an_import_that_stops_reading_a_csv_says_where_and_exits_1(tmp_path, published, text, says, published_rows):
    """The reader stops where the rest of a quoted field could be read as rows; the import printed its usual summary
    and exited 0, and the rows after that line were lost without a word."""
    path = tmp_path / "interactions.csv"
    path.write_text("user_id,item_id,ts\n" + text)
    done = run_cli("import", str(path))
    assert len(published) == published_rows
    if says is None:
        assert done.exit_code == 0 and "reading stopped" not in done.output, done.output
    else:
        assert done.exit_code == 1 and done.output.splitlines()[-1] == says, done.output


def test_an_import_of_a_csv_with_lines_ending_in_a_carriage_return_alone_says_so_and_exits_1(tmp_path, published):
    """Such a file is one line to the reader: it stopped at once, and the import reported one bad row and exited 0."""
    path = tmp_path / "interactions.csv"
    path.write_bytes(f"user_id,item_id,ts\ru1,i1,{T0_S}000\ru2,i2,{T0_S}000\r".encode())
    done = run_cli("import", str(path))
    assert done.exit_code == 1 and not published
    assert done.output.splitlines()[-1] == (
        "line 1: csv: a line ends in a carriage return alone: save the file with LF or CRLF line endings; reading "
        "stopped here: the rest of the file (0 more lines) was not read"
    ), done.output


@pytest.mark.integration
async def test_a_features_list_of_unnamed_pairs_is_a_bad_row_and_the_rows_after_it_are_imported(
    isolated_settings, tmp_path: Path
):
    """``[[[1], 2]]`` looked like a Parquet map's (key, value) pairs: dict() raised TypeError (unhashable list) out
    of the import, and every row after it was lost without a bad-row report."""
    path = tmp_path / "items.jsonl"
    path.write_text(
        '{"item_id":"ok1","categories":["a"]}\n{"item_id":"i2","features":[[[1],2]]}\n'
        '{"item_id":"i3","features":[[{"a":1},2]]}\n{"item_id":"ok4","features":[["len",2]]}\n'
    )
    done = cli(isolated_settings, "import", str(path), "--kind", "items")
    said = " ".join(done.stderr.split())
    assert done.returncode == 0, done.stderr
    assert "skipped line 2: features: a pair's first value must be a feature name, got list" in said
    assert "skipped line 3: features: a pair's first value must be a feature name, got dict" in said
    assert "2 items from 4 rows published" in said and "2 bad rows skipped" in said
    published = await on_topic(isolated_settings, isolated_settings.kafka.items_topic, "item")
    assert [(i.item_id, i.features) for i in published] == [("ok1", {}), ("ok4", {"len": 2.0})]


def test_a_parquet_list_column_of_unnamed_pairs_is_a_bad_row(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as parquet

    path = tmp_path / "items.parquet"
    features = pa.array([[[[1], [2]]], [[[3]]]], type=pa.list_(pa.list_(pa.list_(pa.int64()))))
    parquet.write_table(pa.table({"item_id": ["i1", "i2"], "features": features}), path)
    made = [ImportSpec.parse("items").records(row, NOW_MS) for _, row in file_rows(path, "parquet")]
    assert isinstance(made[0], Rejected), made
    assert made[0].reason == "features: a pair's first value must be a feature name, got list"
    assert not isinstance(made[1], Rejected) and made[1][0].features == {}  # no pairs: any other value is ignored


@pytest.mark.integration
@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
async def test_an_import_from_a_pipe_reads_it_once_and_publishes_every_row(isolated_settings, suffix: str):
    """``cat events.csv | recstream import /dev/stdin``: counting the lines for the progress bar consumed the pipe,
    and the import said "0 events from 0 rows published" and exited 0."""
    rows = [("u1", "i1"), ("u2", "i2"), ("u3", "i3")]
    text = (
        "user_id,item_id,ts\n" + "".join(f"{u},{i},{T0_S}000\n" for u, i in rows)
        if suffix == "csv"
        else "".join(f'{{"user_id":"{u}","item_id":"{i}","ts":{T0_S}000}}\n' for u, i in rows)
    )
    done = cli(isolated_settings, "import", "/dev/stdin", "--format", suffix, stdin=text)
    assert done.returncode == 0, done.stderr
    assert "3 events from 3 rows published" in " ".join(done.stderr.split()), done.stderr
    events = await on_topic(isolated_settings, isolated_settings.kafka.events_topic, "event")
    assert sorted((e.user_id, e.item_id, e.ts) for e in events) == [(u, i, T0_S * 1000) for u, i in rows]


def test_parquet_from_a_pipe_is_refused_in_one_line_before_anything_is_read():
    """Parquet's index is at the end of the file: a stream cannot be read as one (it said "lseek failed")."""
    read_end, write_end = os.pipe()
    os.close(write_end)  # a reader that opened it anyway meets its end at once: never a hang
    try:
        pipe = Path(f"/dev/fd/{read_end}")
        with pytest.raises(ImportSpecError, match=f"^cannot read {pipe} as Parquet: a stream, and Parquet is read"):
            count_rows(pipe, "parquet")
        assert count_rows(pipe, "csv") is None  # a stream's rows are counted as they are read
    finally:
        os.close(read_end)


def test_integer_ids_of_a_typed_file_are_the_ids_a_csv_of_the_same_digits_gives(tmp_path: Path):
    """A Parquet (or JSONL) file with integer user and item columns had every row refused ("user_id: Input should
    be a valid string") while the CSV of the same table imported; a float or a bool id is still refused."""
    import pyarrow as pa
    import pyarrow.parquet as parquet

    parquet.write_table(pa.table({"user_id": [7, 8], "item_id": [42, 43], "ts": [T0_S * 1000] * 2}), tmp_path / "e.pq")
    (tmp_path / "e.csv").write_text(f"user_id,item_id,ts\n7,42,{T0_S}000\n8,43,{T0_S}000\n")
    (tmp_path / "e.jsonl").write_text(
        f'{{"user_id":7,"item_id":42,"ts":{T0_S}000}}\n{{"user_id":8,"item_id":43,"ts":{T0_S}000}}\n'
        f'{{"user_id":7.0,"item_id":42,"ts":{T0_S}000}}\n{{"user_id":"7","item_id":true,"ts":{T0_S}000}}\n'
    )
    spec = ImportSpec.parse("interactions")
    made = {
        fmt: [spec.records(row, NOW_MS) for _, row in file_rows(tmp_path / f"e.{ext}", fmt)]  # type: ignore[arg-type]
        for fmt, ext in (("csv", "csv"), ("jsonl", "jsonl"), ("parquet", "pq"))
    }
    assert all(isinstance(m, list) for m in made["csv"]), made["csv"]
    assert made["parquet"] == made["jsonl"][:2] == made["csv"]  # event ids included
    assert [e.user_id for (e,) in made["csv"]] == ["7", "8"]  # type: ignore[misc]
    assert [m.reason for m in made["jsonl"][2:]] == [  # type: ignore[union-attr]
        "user_id: Input should be a valid string",
        "item_id: Input should be a valid string",
    ]
    items = ImportSpec.parse("items").records({"item_id": 42, "f_len": 2}, NOW_MS)
    users = ImportSpec.parse("users").records({"user_id": 7, "age": 34}, NOW_MS)
    assert items[0].item_id == "42" and users[0].user_id == "7", (items, users)  # type: ignore[index]


GRADUATE_AGE_S = load_settings().pool.graduate_age_s


@pytest.mark.parametrize(
    ("span_s", "warned"),
    [(0, True), (GRADUATE_AGE_S - 1, True), (GRADUATE_AGE_S, False), (GRADUATE_AGE_S + 1, False)],
    ids=["one instant", "limit - 1", "limit", "limit + 1"],
)
def test_an_import_whose_events_span_less_than_the_pools_graduation_age_says_no_item_will_age(
    tmp_path, published, span_s, warned
):
    """A file whose dates were filled in (one for every row) keeps the whole catalogue in the new-item pool, which
    then leaves it only by views: on MovieLens with one instant the served feed fell to 80-85% of its own personal
    list (BENCHMARKS.md, "With no clock at all"), and nothing said why."""
    path = tmp_path / "interactions.csv"
    path.write_text(f"user_id,item_id,ts\nu1,i1,{T0_S}\nu2,i2,{T0_S + span_s}\n")
    done = run_cli("import", str(path), "--ts-unit", "s")
    assert done.exit_code == 0 and len(published) == 2, done.output
    assert ("no item ages out of the pool" in done.output) is warned, done.output
    if warned:
        assert f"span {span_s:,} s of event time" in " ".join(done.output.split()), done.output
