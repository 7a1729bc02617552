"""The bounded record readers on their own: records cut right at chunk boundaries of
every kind, a record past the limit counted by size and never kept, lines numbered."""

from __future__ import annotations

import io
import json

import pytest

from lm_tasks.data import bounded
from lm_tasks.data.bounded import Oversized, csv_records, json_array, lines


@pytest.fixture(params=[1, 2, 3, 7, 1 << 20], ids=lambda n: f"chunk{n}")
def chunk(request, monkeypatch):
    """Every reader must give the same records whatever the chunk size."""
    monkeypatch.setattr(bounded, "CHUNK", request.param)


def read_lines(data: bytes, limit: int) -> list:
    return [("oversized", n, line.quotes) if isinstance(line, Oversized) else (line, n)
            for line, n in lines(io.BytesIO(data), limit)]


def test_lines_end_at_crlf_cr_and_lf_and_the_bom_is_dropped(chunk):
    assert read_lines(b"\xef\xbb\xbfab\r\ncd\rxy\n\nz", 10) == [
        (b"ab\r\n", 4), (b"cd\r", 3), (b"xy\n", 3), (b"\n", 1), (b"z", 1)]


def test_a_line_past_the_limit_is_counted_not_kept(chunk):
    assert read_lines(b'ab\nlong"line"here\nc', 8) == [(b"ab\n", 3), ("oversized", 15, 2), (b"c", 1)]
    assert read_lines(b"12345678\n", 8) == [("oversized", 9, 0)]  # the line end counts
    assert read_lines(b"1234567\n", 8) == [(b"1234567\n", 8)]


def test_csv_records_run_over_lines_while_a_quote_is_open(chunk):
    data = b'a,b\n1,"x\ny"\n2,"q ""quoted"" word\nzzzzzzzzzzzz"\n3,4\n'
    assert list(csv_records(io.BytesIO(data), 20)) == [
        (b"a,b\n", 4, 1), (b'1,"x\ny"\n', 8, 2), (None, 35, 4), (b"3,4\n", 4, 6)]


def test_json_array_elements_one_at_a_time_with_their_lines(chunk):
    records = [{"text": 'a,]}\\"b [{'}, {"text": "x" * 30}, 3, [1, [2]], "s"]
    data = json.dumps(records, indent=1).encode()
    read = list(json_array(io.BytesIO(data), 200, "f.json"))
    assert [json.loads(d) for d, _, _ in read] == records
    assert [line for _, _, line in read] == [2, 5, 8, 9, 15]
    short = [(d is None, size, line) for d, size, line in json_array(io.BytesIO(data), 20, "f.json")]
    # sizes: from the first byte to the delimiter (the blanks before a "]" count)
    assert short == [(True, 29, 2), (True, 47, 5), (False, 1, 8), (True, 22, 9), (False, 4, 15)]


@pytest.mark.parametrize("data, message", [(b"[1, 2", "f.json:1: the JSON array does not end"),
                                           (b'[1,\n "a"}]', "f.json:2: unbalanced '}'")])
def test_broken_json_arrays_name_the_file_and_line(chunk, data, message):
    with pytest.raises(ValueError, match=message):
        list(json_array(io.BytesIO(data), 100, "f.json"))


def test_an_empty_array_has_no_records(chunk):
    assert list(json_array(io.BytesIO(b" [ ] "), 10, "f.json")) == []
