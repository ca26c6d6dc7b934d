"""traceline: the captured ``trace_pipe`` text of tests/targets/calls.c parses back to what the target did.

The truth is ``calls.report.jsonl`` (the target's own account of each call), ``uprobe_profile`` (the
kernel's hit counts) and the raw text itself; no expected value here comes from running the parser.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uprobe_exporter.decode.records import LostEvents, TraceRecord
from uprobe_exporter.decode.traceline import TextParser
from uprobe_exporter.errors import TraceParseError
from uprobe_exporter.kernel.formatfile import EventFormat, parse_format

KERNEL = Path(__file__).parent.parent / "fixtures" / "kernel"
REASONS = {"line_format", "payload", "unknown_event", "value"}
# An independent, loose reading of the context columns: "[001] DBZff  1061.676982: work_entry: "
CONTEXT_RE = re.compile(r"\[(\d+)\] \S+ +(\d+)\.(\d{6}): (\w+): ")


@functools.cache
def formats() -> tuple[EventFormat, ...]:
    return tuple(parse_format(p.read_text(encoding="utf-8")) for p in sorted(KERNEL.glob("*.format")))


@functools.cache
def fixture_lines() -> tuple[str, ...]:
    pieces = (KERNEL / "calls.trace_pipe").read_bytes().decode("latin-1").split("\n")
    assert pieces[-1] == "", "trace_pipe text ends with a newline"
    return tuple(pieces[:-1])


@functools.cache
def report() -> tuple[dict[str, Any], ...]:
    text = (KERNEL / "calls.report.jsonl").read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines())


@functools.cache
def profile_hits() -> dict[str, int]:
    """event → hits, read from the captured uprobe_profile by plain splitting."""
    text = (KERNEL / "uprobe_profile").read_text(encoding="utf-8")
    return {line.split()[1]: int(line.split()[2]) for line in text.splitlines() if line.strip()}


def text_of(hex_bytes: str) -> str:
    return bytes.fromhex(hex_bytes).decode("utf-8", "backslashreplace")


def new_parser() -> TextParser:
    return TextParser.for_formats(formats())


def parse_all(lines: list[str] | tuple[str, ...]) -> tuple[list[TraceRecord | LostEvents], list[TraceParseError]]:
    return new_parser().parse_lines(list(lines), final=True)


@functools.cache
def fixture_records() -> tuple[TraceRecord, ...]:
    items, errors = parse_all(fixture_lines())
    assert errors == []
    out = []
    for item in items:
        assert isinstance(item, TraceRecord)
        out.append(item)
    return tuple(out)


def records_of(event: str) -> list[TraceRecord]:
    return [r for r in fixture_records() if r.event == event]


def calls(fn: str) -> list[dict[str, Any]]:
    return [c for c in report() if c["fn"] == fn]


def test_fixture_parses_without_errors_one_record_per_kernel_hit() -> None:
    items, errors = parse_all(fixture_lines())
    assert errors == []
    assert all(isinstance(i, TraceRecord) for i in items)
    assert Counter(i.event for i in items if isinstance(i, TraceRecord)) == Counter(profile_hits())


def test_work_entries_are_exactly_the_calls_the_target_made() -> None:
    got = Counter((r.tid, r.args["a"], r.args["s"]) for r in records_of("work_entry"))
    want = Counter((c["tid"], c["a"], text_of(c["s_hex"])) for c in calls("work"))
    assert got == want
    assert all(set(r.args) == {"a", "s"} for r in records_of("work_entry")), "__comm and __sp are not args"


def test_work_returns_are_exactly_the_values_returned() -> None:
    got = Counter((r.tid, r.args["ret"]) for r in records_of("work_return"))
    assert got == Counter((c["tid"], c["ret"]) for c in calls("work"))
    assert all(r.is_return and not r.args.keys() - {"ret"} for r in records_of("work_return"))


def test_special_strings_survive() -> None:
    strings = {r.args["s"] for r in records_of("work_entry")}
    assert {text_of(c["s_hex"]) for c in calls("work")} == strings
    assert "line one\nline two" in strings  # spans two lines of trace_pipe
    assert 'n=5" fake=1' in strings  # looks like the start of another argument
    assert "" in strings


def test_comm_and_tgid_are_those_the_target_reported() -> None:
    comm_of = {c["tid"]: text_of(c["comm_hex"]) for c in calls("work")}
    pids = {c["pid"] for c in report()}
    for r in fixture_records():
        assert r.comm == comm_of[r.tid]
        assert r.tgid in pids
    assert "w-0 a-b c" in comm_of.values()  # spaces and dashes inside the 16-column comm


def test_recursion_entries_descend_then_returns_ascend_per_thread() -> None:
    entries: dict[int, list[int]] = defaultdict(list)
    returns: dict[int, list[int]] = defaultdict(list)
    for r in fixture_records():
        if r.event == "recurse_entry":
            entries[r.tid].append(r.args["n"])
        elif r.event == "recurse_return":
            returns[r.tid].append(r.args["ret"])
    done = {c["tid"]: c for c in calls("recurse")}
    assert set(entries) == set(returns) == set(done)
    for tid, c in done.items():
        assert entries[tid] == list(range(c["n"], -1, -1))
        assert returns[tid] == list(range(c["n"] + 1))
        assert returns[tid][-1] == c["ret"]


def test_context_columns_match_the_raw_text() -> None:
    raw = Counter((int(m[1]), int(m[2]) * 10**9 + int(m[3]) * 1000, m[4])
                  for line in fixture_lines() if (m := CONTEXT_RE.search(line)))
    assert Counter((r.cpu, r.ts_ns, r.event) for r in fixture_records()) == raw
    stamps = [r.ts_ns for r in fixture_records()]
    assert stamps == sorted(stamps), "trace_pipe merges the CPUs in timestamp order; so must the records"


def test_return_ip_is_the_function_entered() -> None:
    for fn in ("work", "recurse"):
        entry_ips = {r.ip for r in records_of(f"{fn}_entry")}
        assert len(entry_ips) == 1
        assert {r.ip for r in records_of(f"{fn}_return")} == entry_ips
        assert all(r.ret_ip not in (0, *entry_ips) for r in records_of(f"{fn}_return"))
        assert all(r.ret_ip == 0 and not r.is_return for r in records_of(f"{fn}_entry"))
    assert {r.ip for r in records_of("types_entry")} == {r.ip for r in records_of("work_entry")}


def test_stack_pointer_pairs_each_return_with_its_entry() -> None:
    entry_sps: dict[tuple[str, int], Counter[int]] = defaultdict(Counter)
    for r in fixture_records():
        if not r.is_return:
            entry_sps[r.event.removesuffix("_entry"), r.tid][r.sp] += 1
    for r in fixture_records():
        if r.is_return:
            assert entry_sps[r.event.removesuffix("_return"), r.tid][r.sp - 8] > 0


def test_types_entry_values_follow_from_the_arguments() -> None:
    """types_entry probes work() too: x8=%di:x8 u16=%di:u16 c=+0(%si):char arr=+0(%si):u8[4]
    bits=%di:b4@2/32 bad=+0(%ax):string (faults)."""
    types: dict[int, list[TraceRecord]] = defaultdict(list)
    for r in records_of("types_entry"):
        types[r.tid].append(r)
    made: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for c in calls("work"):
        made[c["tid"]].append(c)
    assert set(types) == set(made)
    for tid, recs in types.items():
        assert len(recs) == len(made[tid])
        for r, c in zip(recs, made[tid], strict=True):
            a, s = c["a"], bytes.fromhex(c["s_hex"]) + b"\0"
            assert r.args["x8"] == a & 0xFF
            assert r.args["u16"] == a & 0xFFFF
            assert r.args["bits"] == ((a & 0xFFFFFFFF) >> 2) & 0xF
            assert r.args["c"] == s[:1].decode("utf-8", "backslashreplace")
            if s[0] < 0x80:
                assert isinstance(r.args["c"], str)
                assert len(r.args["c"]) == 1
            arr = r.args["arr"]
            assert isinstance(arr, list)
            assert len(arr) == 4
            known = min(4, len(s))  # past the NUL, memory holds whatever follows the string
            assert arr[:known] == list(s[:known])
            assert r.args["bad"] is None  # (fault)


def test_lost_events_markers_in_both_kernel_forms() -> None:
    lines = list(fixture_lines())
    lines.insert(3, "CPU:1 [LOST 12 EVENTS]")
    lines.insert(0, "CPU:0 [LOST EVENTS]")
    lines.append("CPU:15 [LOST 18446744073709551615 EVENTS]")
    items, errors = parse_all(lines)
    assert errors == []
    assert items[0] == LostEvents(0, None)
    assert items[4] == LostEvents(1, 12)
    assert items[-1] == LostEvents(15, 2**64 - 1)
    assert [i for i in items if isinstance(i, TraceRecord)] == list(fixture_records())


def _split_at(lines: tuple[str, ...], cuts: list[int]) -> list[list[str]]:
    bounds = [0, *sorted(set(cuts)), len(lines)]
    return [list(lines[a:b]) for a, b in itertools.pairwise(bounds)]


def parse_in_batches(batches: list[list[str]]) -> tuple[list[TraceRecord | LostEvents], list[TraceParseError]]:
    parser = new_parser()
    items: list[TraceRecord | LostEvents] = []
    errors: list[TraceParseError] = []
    for batch in batches:
        got, errs = parser.parse_lines(batch)
        items += got
        errors += errs
    got, errs = parser.parse_lines([], final=True)
    return items + got, errors + errs


def test_cut_between_the_two_lines_of_a_string() -> None:
    lines = fixture_lines()
    cuts = [i + 1 for i, line in enumerate(lines) if line.endswith('s="line one')]
    assert len(cuts) == sum("\n" in text_of(c["s_hex"]) for c in calls("work")) > 0
    for cut in cuts:
        items, errors = parse_in_batches(_split_at(lines, [cut]))
        assert errors == []
        assert items == list(fixture_records())
    items, errors = parse_in_batches(_split_at(lines, cuts))
    assert (items, errors) == (list(fixture_records()), [])


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_any_batching_gives_the_same_records(data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(fixture_lines())), max_size=40))
    items, errors = parse_in_batches(_split_at(fixture_lines(), cuts))
    assert errors == []
    assert items == list(fixture_records())


def _line_of(event: str, index: int = 0) -> tuple[int, str]:
    found = [(i, line) for i, line in enumerate(fixture_lines()) if f" {event}: " in line]
    return found[index]


@pytest.mark.parametrize(("cut", "reason"), [
    (lambda line: line[: line.index(" s=") + 6], "payload"),  # truncated inside the string
    (lambda line: line.replace('s="hello world"', 's="hello world'), "payload"),  # closing quote removed
    (lambda line: line.replace('__comm="w-0 a-b c"', '__comm="w-0 a-b c'), "payload"),
    (lambda line: line.replace(" a=-7 ", " a= "), "payload"),
    (lambda line: line[:30], "line_format"),  # truncated inside the context columns
    (lambda line: line[:17] + "x" + line[17:].lstrip("0123456789"), "line_format"),  # tid not a number
    (lambda line: "", "line_format"),
])
def test_a_bad_line_is_counted_and_the_rest_parsed(cut: Callable[[str], str], reason: str) -> None:
    i, line = _line_of("work_entry")
    assert 's="hello world"' in line
    bad = cut(line)
    lines = list(fixture_lines())
    lines[i] = bad
    items, errors = parse_all(lines)
    assert [(e.reason, e.raw) for e in errors] == [(reason, bad)]
    good = list(fixture_records())
    assert items == good[:i] + good[i + 1:]


def test_unknown_events_are_counted_not_raised() -> None:
    parser = TextParser.for_formats(f for f in formats() if not f.name.startswith("recurse"))
    items, errors = parser.parse_lines(list(fixture_lines()), final=True)
    assert {e.reason for e in errors} == {"unknown_event"}
    assert len(errors) == profile_hits()["recurse_entry"] + profile_hits()["recurse_return"]
    assert items == [r for r in fixture_records() if not r.event.startswith("recurse")]


def test_truncated_last_line_waits_for_more_text_then_fails_at_the_end() -> None:
    i, line = _line_of("work_entry")
    parser = new_parser()
    items, errors = parser.parse_lines([*fixture_lines()[:i], line[:-5]])
    assert errors == []
    assert items == list(fixture_records()[:i])
    items, errors = parser.parse_lines([], final=True)
    assert items == []
    assert [(e.reason, e.raw) for e in errors] == [("payload", line[:-5])]


def test_unfinished_string_gives_up_after_a_bounded_number_of_lines() -> None:
    i, line = _line_of("work_entry")
    broken = line[:-1]  # no closing quote: will never complete
    lines = [broken, *(["more text"] * 20), fixture_lines()[i + 1]]
    items, errors = parse_all(lines)
    assert len(errors) == 21  # every line accounted for, none swallowed
    assert errors[0].reason == "payload"
    assert {e.reason for e in errors[1:]} == {"line_format"}
    assert items == [fixture_records()[i + 1]]


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_truncated_lines_never_raise(data: st.DataObject) -> None:
    lines = list(fixture_lines())
    for _ in range(data.draw(st.integers(1, 5))):
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = lines[i][: data.draw(st.integers(0, len(lines[i])))]
    items, errors = parse_all(lines)
    assert {e.reason for e in errors} <= REASONS
    assert all(isinstance(e, TraceParseError) for e in errors)
    assert len(items) <= len(fixture_records())


@pytest.mark.parametrize(("old", "new", "value"), [
    ("arr={104,101,108,108}", "arr={104,,108,108}", None),  # an element cut out: cannot be a record
    ("arr={104,101,108,108}", "arr={104,0101,108,108}", ("arr", [104, 101, 108, 108])),
    (" u16=65529 ", " u16=065529 ", ("u16", 65529)),
])
def test_a_corrupted_number_never_escapes_as_an_exception(old: str, new: str, value: tuple[str, Any] | None) -> None:
    """A corrupted number is counted (reason "value" when the regex let it through, "payload" when not),
    never raised; a leading zero may be read as decimal."""
    i, line = _line_of("types_entry")
    assert old in line
    lines = list(fixture_lines())
    lines[i] = line.replace(old, new)
    items, errors = parse_all(lines)
    good = list(fixture_records())
    if errors or value is None:
        assert [e.raw for e in errors] == [lines[i]]
        assert errors[0].reason in {"payload", "value"}
        assert items == good[:i] + good[i + 1:]
    else:
        assert items == good
        rec = items[i]
        assert isinstance(rec, TraceRecord)
        assert value in rec.args.items()
