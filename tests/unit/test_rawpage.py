"""rawpage: captured ``trace_pipe_raw`` pages of tests/targets/calls.c decode to what the target did, and
synthetic pages built from the real format files (every header type, truncated, corrupted) decode to
exactly what was put in them, or count what they could not, never raising."""

from __future__ import annotations

import functools
import json
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_traceline import KERNEL, formats, text_of
from tests.unit.twins import backend
from uprobe_exporter.decode.rawpage import RAW_ERROR_REASONS, Located, PageLayout, RawDecoder
from uprobe_exporter.decode.records import LostEvents, TraceRecord
from uprobe_exporter.kernel.formatfile import EventFormat, FieldKind

PAGE = 4096


@functools.cache
def layout() -> PageLayout:
    return PageLayout.parse((KERNEL / "header_page").read_text())


def decoder() -> RawDecoder:
    return RawDecoder.for_formats(layout(), formats())


@functools.cache
def fixture_records() -> tuple[TraceRecord, ...]:
    d = decoder()
    out: list[TraceRecord | LostEvents] = []
    for path in sorted(KERNEL.glob("calls.raw.cpu*")):
        data = path.read_bytes()
        assert len(data) % PAGE == 0, "trace_pipe_raw returns whole pages"
        for i in range(0, len(data), PAGE):
            d.decode(data[i:i + PAGE], int(path.name.removeprefix("calls.raw.cpu")), out)
    assert d.errors == dict.fromkeys(RAW_ERROR_REASONS, 0)
    assert all(isinstance(r, TraceRecord) for r in out)
    return tuple(r for r in out if isinstance(r, TraceRecord))


@functools.cache
def report() -> tuple[dict[str, Any], ...]:
    text = (KERNEL / "calls.raw.report.jsonl").read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines())


def test_page_layout_from_header_page() -> None:
    assert layout() == PageLayout(timestamp=(0, 8), commit=(8, 8), data_offset=16, page_size=PAGE)


def test_captured_pages_hold_exactly_the_calls_the_target_made() -> None:
    records = fixture_records()
    work = [c for c in report() if c["fn"] == "work"]
    entries = [r for r in records if r.event == "work_entry"]
    returns = [r for r in records if r.event == "work_return"]
    assert Counter((r.tid, r.args["a"], r.args["s"]) for r in entries) == \
        Counter((c["tid"], c["a"], text_of(c["s_hex"])) for c in work)
    assert Counter((r.tid, r.args["ret"]) for r in returns) == Counter((c["tid"], c["ret"]) for c in work)
    assert "line one\nline two" in {r.args["s"] for r in entries}
    comm_of = {c["tid"]: text_of(c["comm_hex"]) for c in work}
    assert all(r.comm == comm_of[r.tid] for r in records)
    assert "w-0 a-b c" in comm_of.values()
    assert all(r.tgid == 0 for r in records), "raw records carry no tgid: the pipeline looks it up"


def test_captured_pages_recursion_and_stack_pointers() -> None:
    entries: dict[int, list[TraceRecord]] = defaultdict(list)
    for r in sorted(fixture_records(), key=lambda r: r.ts_ns):
        if r.event.startswith("recurse"):
            entries[r.tid].append(r)
    done = {c["tid"]: c for c in report() if c["fn"] == "recurse"}
    assert set(entries) == set(done)
    for tid, recs in entries.items():
        n = done[tid]["n"]
        assert [r.args["n"] for r in recs if not r.is_return] == list(range(n, -1, -1))
        assert [r.args["ret"] for r in recs if r.is_return] == list(range(n + 1))
        open_sps = [r.sp for r in recs if not r.is_return]
        assert sorted(r.sp - 8 for r in recs if r.is_return) == sorted(open_sps)


def test_captured_pages_types_and_timestamps() -> None:
    records = fixture_records()
    made = defaultdict(list)
    for c in report():
        if c["fn"] == "work":
            made[c["tid"]].append(c)
    for tid, calls in made.items():
        types = [r for r in records if r.event == "types_entry" and r.tid == tid]
        assert len(types) == len(calls)
        for r, c in zip(types, calls, strict=True):
            a, s = c["a"], bytes.fromhex(c["s_hex"]) + b"\0"
            bits = ((a & 0xFFFFFFFF) >> 2) & 0xF
            assert (r.args["x8"], r.args["u16"], r.args["bits"]) == (a & 0xFF, a & 0xFFFF, bits)
            assert r.args["c"] == s[:1].decode("utf-8", "backslashreplace")
            assert r.args["arr"][:min(4, len(s))] == list(s[:4])
            assert r.args["bad"] is None  # the fetch faulted: __data_loc length 0
    for cpu in {r.cpu for r in records}:
        stamps = [r.ts_ns for r in records if r.cpu == cpu]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert any(t % 1000 for t in stamps), "nanoseconds, not microseconds"


# --- synthetic pages: an independent encoder of the layout the kernel writes ---------------------------

@dataclass(frozen=True)
class Spec:
    """One record to write: its event, thread, time delta from the previous event, argument values."""

    fmt: EventFormat
    tid: int
    delta: int
    values: dict[str, Any]


def encode_record(spec: Spec) -> bytes:
    fixed = max(f.offset + f.size for f in spec.fmt.fields)
    body = bytearray(fixed)
    struct.pack_into("=HBBi", body, 0, spec.fmt.id, 0, 0, spec.tid)
    tail = bytearray()
    for f in spec.fmt.fields:
        v = spec.values[f.name]
        if f.kind is FieldKind.STRING:
            if v is None:
                loc = fixed + len(tail)  # a faulted fetch: length 0
            else:
                data = v + b"\0"
                loc = (len(data) << 16) | (fixed + len(tail))
                tail += data
            struct.pack_into("=I", body, f.offset, loc)
        elif f.kind is FieldKind.ARRAY:
            code = {1: "B", 2: "H", 4: "I", 8: "Q"}[f.elem_size]
            struct.pack_into(f"={f.count}{code}", body, f.offset, *v)
        else:
            code = {1: "b", 2: "h", 4: "i", 8: "q"}[f.size]
            struct.pack_into("=" + (code if f.signed and f.kind is FieldKind.INT else code.upper()), body, f.offset, v)
    return bytes(body + tail)


def encode_event(payload: bytes, delta: int, force_long: bool) -> bytes:
    payload += b"\0" * (-len(payload) % 4)
    if len(payload) <= 112 and not force_long:
        return struct.pack("=I", (delta << 5) | (len(payload) // 4)) + payload
    return struct.pack("=II", delta << 5, len(payload) + 4) + payload


def value_for(fmt: EventFormat, name: str, draw: st.DrawFn) -> Any:
    f = next(x for x in fmt.fields if x.name == name)
    if f.kind is FieldKind.STRING:
        return draw(st.one_of(st.none(), st.binary(max_size=200).map(lambda b: b.replace(b"\0", b"@"))))
    if f.kind is FieldKind.ARRAY:
        return draw(st.lists(st.integers(0, 255), min_size=f.count, max_size=f.count))
    bits = f.size * 8
    signed = f.signed and f.kind is FieldKind.INT
    return draw(st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else st.integers(0, (1 << bits) - 1))


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    fmt = draw(st.sampled_from(formats()))
    values = {f.name: value_for(fmt, f.name, draw) for f in fmt.fields}
    return Spec(fmt, draw(st.integers(0, 1 << 22)), draw(st.integers(0, (1 << 27) - 1)), values)


Page = tuple[bytes, list[tuple[Spec, int]], int | None]


@st.composite
def pages(draw: st.DrawFn) -> Page:
    """A page of records with time extends, discarded events and long headers mixed in; returns the page,
    what it holds (spec, absolute timestamp), and the missed-events count (-1: flagged, not stored)."""
    ts = base = draw(st.integers(0, 1 << 58))
    data = b""
    held: list[tuple[Spec, int]] = []
    for spec in draw(st.lists(specs(), max_size=40)):
        extra = b""
        if draw(st.booleans()):
            extend = draw(st.integers(1, 1 << 30))
            extra += struct.pack("=II", ((extend & ((1 << 27) - 1)) << 5) | 30, extend >> 27)
            ts += extend
        if draw(st.integers(0, 9)) == 0:  # an event a filter discarded: padding with a non-zero delta
            extra += struct.pack("=II", (1 << 5) | 29, 12) + b"\xee" * 8
        event = encode_event(encode_record(spec), spec.delta, draw(st.booleans()))
        if len(data) + len(extra) + len(event) > PAGE - 16 - 8:
            break
        data += extra + event
        ts += spec.delta
        held.append((spec, ts))
    missed = draw(st.sampled_from([None, -1, 7, 123456]))
    commit = len(data) | ((1 << 31) if missed is not None else 0) | ((1 << 30) if missed and missed > 0 else 0)
    tail = struct.pack("=q", missed) if missed and missed > 0 else b""
    page = struct.pack("=QQ", base, commit) + data + tail
    return page + b"\0" * (PAGE - len(page)), held, missed


def expected(spec: Spec, ts: int, cpu: int) -> TraceRecord:
    def py(name: str) -> Any:
        v = spec.values[name]
        f = next(x for x in spec.fmt.fields if x.name == name)
        if f.kind is FieldKind.STRING:
            return None if v is None else v.decode("utf-8", "backslashreplace")
        if f.kind is FieldKind.CHAR:
            return bytes((v,)).decode("utf-8", "backslashreplace")
        return v

    comm = py("__comm")
    is_return = spec.fmt.is_return
    return TraceRecord(spec.fmt.name, spec.tid, 0, cpu, ts, comm if comm is not None else "<...>",
                       spec.values["__probe_func" if is_return else "__probe_ip"],
                       spec.values.get("__probe_ret_ip", 0), is_return, spec.values["__sp"],
                       {f.name: py(f.name) for f in spec.fmt.args if f.name not in ("__comm", "__sp")})


@settings(max_examples=300, deadline=None)
@given(pages())
def test_synthetic_pages_decode_to_exactly_what_was_written(page: Page) -> None:
    data, held, missed = page
    d = decoder()
    out: list[TraceRecord | LostEvents] = []
    assert d.decode(data, 3, out) == 0
    want: list[TraceRecord | LostEvents] = [LostEvents(3, None if missed == -1 else missed)] if missed else []
    want += [expected(spec, ts, 3) for spec, ts in held]
    assert out == want
    assert d.errors == dict.fromkeys(RAW_ERROR_REASONS, 0)


@settings(max_examples=300, deadline=None)
@given(pages(), st.data())
def test_truncated_and_corrupted_pages_never_raise(page: Page, data: st.DataObject) -> None:
    raw = bytearray(page[0])
    for _ in range(data.draw(st.integers(0, 20))):
        raw[data.draw(st.integers(0, PAGE - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, PAGE))
    d = decoder()
    out: list[TraceRecord | LostEvents] = []
    anomalies = d.decode(bytes(raw[:cut]), 0, out)
    assert anomalies == sum(d.errors.values())
    assert all(type(x) in (TraceRecord, LostEvents) for x in out)


def test_every_header_type() -> None:
    """Time extend, absolute time stamp, discarded event, long header, end-of-page padding, unknown id."""
    fmt = next(f for f in formats() if f.name == "recurse_entry")
    values = {"__probe_ip": 0x401000, "__comm": b"t", "__sp": 0x7FF0, "n": 5}
    rec = encode_record(Spec(fmt, 42, 0, values))
    unknown = b"\xff\xff" + rec[2:]
    data = (encode_event(rec, 10, False)  # at 1000 + 10
            + struct.pack("=II", (5 << 5) | 30, 2)  # + (2 << 27) + 5
            + encode_event(rec, 1, True)
            + struct.pack("=II", (1 << 5) | 29, 8) + b"\0" * 4  # discarded
            + struct.pack("=II", (77 << 5) | 31, 0)  # absolute: 77
            + encode_event(rec, 3, False)
            + encode_event(unknown, 0, False)
            + struct.pack("=I", 29) + b"\0" * 12)  # padding, delta 0: the rest of the page is empty
    page = struct.pack("=QQ", 1000, len(data)) + data
    d = decoder()
    out: list[TraceRecord | LostEvents] = []
    assert d.decode(page, 0, out) == 1
    assert [r.ts_ns for r in out if isinstance(r, TraceRecord)] == [1010, 1010 + (2 << 27) + 5 + 1, 80]
    assert d.errors["unknown_event"] == 1
    assert d.decode(page[:10], 0, []) == 1 and d.errors["page_header"] == 1
    bad_commit = struct.pack("=QQ", 0, PAGE) + data
    assert d.decode(bad_commit, 0, []) == 1 and d.errors["page_header"] == 2
    assert d.decode(b"", 0, []) == 0, "an empty read is no page"
    short_padding = encode_event(rec, 0, False) + struct.pack("=I", 29)  # 4 bytes of padding end the data
    one: list[TraceRecord | LostEvents] = []
    assert d.decode(struct.pack("=QQ", 0, len(short_padding)) + short_padding, 0, one) == 0 and len(one) == 1


@settings(max_examples=300, deadline=None)
@given(pages(), st.data())
def test_the_native_walk_is_the_python_walk(page: Page, data: st.DataObject) -> None:
    """``_native.locate`` against the Python walk it mirrors: the same records, markers, error counts and
    return value, on whole, corrupted and cut pages (and it is built: CI compiles it)."""
    raw = bytearray(page[0])
    for _ in range(data.draw(st.integers(0, 20))):
        raw[data.draw(st.integers(0, PAGE - 1))] = data.draw(st.integers(0, 255))
    cut = bytes(raw[:data.draw(st.sampled_from([PAGE, data.draw(st.integers(0, PAGE))]))])
    walks = []
    handlers = decoder().handlers
    for native in (True, False):
        d = RawDecoder(layout(), handlers, walk=backend(native).walk)
        located: list[Located] = []
        lost: list[LostEvents] = []
        walks.append((d.locate(cut, 2, located, lost), located, lost, d.errors))
    assert walks[0] == walks[1]


def test_a_timestamp_past_64_bits_ends_the_walk_as_a_bad_event_header() -> None:
    """Time extends that carry the stamp past 2**64 (only a corrupt page has them): both walks keep the
    records before, count one bad event header and stop there."""
    fmt = next(f for f in formats() if f.name == "recurse_entry")
    rec = encode_event(encode_record(Spec(fmt, 42, 0, {"__probe_ip": 1, "__comm": b"t", "__sp": 2, "n": 5})), 1,
                       False)
    extend = struct.pack("=II", ((1 << 27) - 1) << 5 | 30, (1 << 32) - 1)
    data = rec + extend * 40 + rec
    page = struct.pack("=QQ", (1 << 64) - (1 << 40), len(data)) + data
    walks = []
    for native in (True, False):
        d = RawDecoder.for_formats(layout(), formats(), backend(native).walk)
        located: list[Located] = []
        walks.append((d.locate(page, 0, located, []), [r[0] for r in located], d.errors))
    assert walks[0] == walks[1]
    assert walks[0][0] == 1 and len(walks[0][1]) == 1 and walks[0][2]["event_header"] == 1


def test_half_full_tells_a_page_taken_from_under_its_writer() -> None:
    """A full page holds at least half its capacity whatever the event size; the reader stops reading a
    CPU at a page under half full (see RawPipeReader.run)."""
    lay = layout()
    capacity = lay.page_size - lay.data_offset
    for commit, full in ((capacity, True), (capacity // 2, True), (capacity // 2 - 4, False), (0, False)):
        page = struct.pack("=QQ", 1, commit | (1 << 31)) + b"\0" * capacity  # the missed-events flag is not size
        assert lay.half_full(page) is full
    assert not lay.half_full(b"\0" * 12), "a page cut inside its header"
