"""reader.LineSplitter: bytes in any chunking → the same complete lines (its pure part)."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from uprobe_exporter.run.reader import LineSplitter

TRACE_PIPE = Path(__file__).parent.parent / "fixtures" / "kernel" / "calls.trace_pipe"


def split_all(data: bytes, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    splitter = LineSplitter()
    lines: list[str] = []
    for a, b in itertools.pairwise(bounds):
        lines += splitter.feed(data[a:b])
    return lines + splitter.flush()


def expected_lines(data: bytes) -> list[str]:
    text = data.decode("latin-1")
    pieces = text.split("\n")
    return pieces[:-1] if pieces[-1] == "" else pieces


def test_whole_fixture_in_one_read() -> None:
    data = TRACE_PIPE.read_bytes()
    splitter = LineSplitter()
    lines = splitter.feed(data)
    assert lines == expected_lines(data)
    assert len(lines) == data.count(b"\n")
    assert splitter.flush() == []


def test_partial_line_is_kept_until_its_newline() -> None:
    data = TRACE_PIPE.read_bytes()
    first = data.index(b"\n")
    splitter = LineSplitter()
    assert splitter.feed(data[:first]) == []
    assert splitter.feed(data[first:first + 1]) == [data[:first].decode("latin-1")]
    assert splitter.feed(b"") == []


def test_flush_returns_a_last_line_without_newline() -> None:
    data = TRACE_PIPE.read_bytes()
    first = data.index(b"\n")
    splitter = LineSplitter()
    assert splitter.feed(data[:first]) == []
    assert splitter.flush() == [data[:first].decode("latin-1")]
    assert splitter.flush() == []


def test_bytes_are_one_char_each() -> None:
    data = TRACE_PIPE.read_bytes()
    lines = split_all(data, [])
    assert sum(len(line) + 1 for line in lines) == len(data)
    assert any(any(ord(ch) >= 0x80 for ch in line) for line in lines)  # the non-UTF-8 strings are there


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_any_chunking_of_the_fixture_gives_the_same_lines(data: st.DataObject) -> None:
    raw = TRACE_PIPE.read_bytes()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=60))
    assert split_all(raw, cuts) == expected_lines(raw)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300), st.data())
def test_any_chunking_of_any_bytes_gives_the_same_lines(raw: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))
    assert split_all(raw, cuts) == expected_lines(raw)
