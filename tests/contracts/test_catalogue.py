"""Rows of CSV and JSONL files and how they spell items: line numbers, quoting, typed and text values."""

from __future__ import annotations

import csv

import pytest

from recstream.contracts.catalogue import RowError, item_object, read_rows


def test_csv_rows_keep_their_file_line_numbers_through_quotes_and_blank_lines():
    lines = [b"item_id,categories\n", b'"i1","a|b"\n', b"\n", b'i2,"multi\n', b'line"\n', b"i3\n", b"i4,c\n"]
    rows = list(read_rows(lines, "csv"))
    assert [(n, r if isinstance(r, dict) else str(r)) for n, r in rows] == [
        (2, {"item_id": "i1", "categories": "a|b"}),
        (5, {"item_id": "i2", "categories": "multi\nline"}),
        (6, "1 values for 2 columns"),
        (7, {"item_id": "i4", "categories": "c"}),
    ]


def test_a_file_without_a_header_takes_the_given_columns_and_an_unclosed_quote_ends_it_with_one_error():
    rows = list(read_rows([b"u1\ti1\t5\n", b'u2\t"i2\n', b"u3\ti3\t4\n"], "csv", "\t", ["user", "item", "rating"]))
    assert rows[0] == (1, {"user": "u1", "item": "i1", "rating": "5"})
    assert len(rows) == 2 and isinstance(rows[1][1], RowError) and "csv:" in str(rows[1][1])


@pytest.mark.parametrize(
    "bad",
    [b'i2,"a"b\n', b'i2,"27" monitor",x\n', b"i2," + b"x" * (csv.field_size_limit() + 1) + b"\n"],
    ids=["stray quote", "stray quote, odd count", "overlong field"],
)
def test_a_line_the_csv_reader_refuses_is_reported_and_the_lines_after_it_are_still_read(bad: bytes):
    """One bad line once ended the file: every valid row after it was lost, reported as that one error."""
    rows = list(read_rows([b"item_id,categories\n", b"i1,a\n", bad, b"i3,c\n", b"i4,d\n"], "csv"))
    assert [n for n, _ in rows] == [2, 3, 4, 5] and isinstance(rows[1][1], RowError) and "csv:" in str(rows[1][1])
    assert [r["item_id"] for _, r in rows if isinstance(r, dict)] == ["i1", "i3", "i4"]


def test_a_refused_record_quoted_over_several_lines_ends_the_file_rather_than_invent_rows_from_its_rest():
    """An overlong field quoted across lines: read on after it, its rest ("i9,evil") came out as a row."""
    big = b"x" * (csv.field_size_limit() + 1)
    rows = list(read_rows([b"item_id,categories\n", b'i1,"' + big + b"\n", b"i9,evil\n", b'tail"\n', b"i4,d\n"], "csv"))
    assert len(rows) == 1 and "csv:" in str(rows[0][1])


def test_a_refused_record_over_several_lines_whose_quote_closed_lets_the_lines_after_it_be_read():
    rows = list(read_rows([b"item_id,categories\n", b'i1,"multi\n', b'line" x\n', b"i3,c\n"], "csv"))
    assert (
        [n for n, _ in rows] == [3, 4]
        and "csv:" in str(rows[0][1])
        and rows[1][1] == {"item_id": "i3", "categories": "c"}
    )


def test_a_stray_quote_that_leaves_a_field_open_as_its_writer_meant_ends_the_file_rather_than_invent_a_row():
    """csv closes ``"see "`` at the stray quote; its writer meant the field to run on to the next line, and reading
    on took that line ("i9,evil") as an item."""
    lines = [b"item_id,categories\n", b'i2,"see "manual" p.3\n', b"i9,evil\n", b'",x\n', b"i4,d\n"]
    rows = list(read_rows(lines, "csv"))
    assert len(rows) == 1 and rows[0][0] == 2 and "csv:" in str(rows[0][1])


def test_a_header_the_csv_reader_refuses_ends_the_file_with_one_error():
    rows = list(read_rows([b'item_id,"categ"ories\n', b"i1,a\n"], "csv"))
    assert len(rows) == 1 and rows[0][0] == 1 and "csv:" in str(rows[0][1])


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_byte_order_mark_before_the_first_line_is_not_part_of_it(fmt: str):
    """A spreadsheet's UTF-8 export starts with one: the first column was "\ufeffitem_id", every row refused."""
    lines = [b"item_id\n", b"i1\n"] if fmt == "csv" else [b'{"item_id": "i1"}\n']
    lines[0] = b"\xef\xbb\xbf" + lines[0]
    assert [row for _, row in read_rows(lines, fmt)] == [{"item_id": "i1"}]


def test_undecodable_bytes_are_kept_for_the_contract_to_refuse():
    [(number, row)] = list(read_rows([b"item_id\n", b"i\xff1\n"], "csv"))
    assert number == 2 and row == {"item_id": "i\ufffd1"}


@pytest.mark.parametrize(
    ("row", "item"),
    [
        ({"item_id": "i", "categories": " a | b ||"}, {"item_id": "i", "categories": ["a", "b"]}),
        (
            {"item_id": "i", "available": "TRUE", "created_ts": " 17 "},
            {"item_id": "i", "available": True, "created_ts": 17},
        ),
        ({"item_id": "i", "available": "", "created_ts": ""}, {"item_id": "i"}),
        ({"item_id": "i", "f_a": "1e3", "f_b": ""}, {"item_id": "i", "features": {"a": 1000.0}}),
        (
            {"item_id": "i", "categories": ["x"], "available": False},
            {"item_id": "i", "categories": ["x"], "available": False},
        ),
        ({"item_id": "i", "features": {"a": 1.0}, "f_b": 2}, {"item_id": "i", "features": {"a": 1.0, "b": 2}}),
    ],
)
def test_item_rows_read_text_as_the_contracts_types_and_pass_typed_values(row, item):
    assert item_object(row) == item


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ({"item_id": "i", "colour": "red"}, "colour: not an item column"),
        ({"item_id": "i", "created_ts": "yesterday"}, "created_ts: expected an integer"),
        ({"item_id": "i", "f_a": "cheap"}, "f_a: expected a number"),
        ({"item_id": "i", "features": "a=1"}, "features: a CSV names each feature in a column of its own"),
    ],
)
def test_a_row_that_does_not_spell_an_item_says_which_column(row, says):
    with pytest.raises(RowError, match=says):
        item_object(row)
