"""The native emitters cover every kind of event exactly as the record path does: Go programs' events (ip,
ret_ip and pairing sp derived from hidden fields, calls paired per goroutine and process, Go strings),
returns seen at RET instructions, USDT returns that close only the matching entry, and histogram labels
taken from arguments (strings with quotes, newlines and non-UTF-8 bytes, arrays, chars, pods) at the
entry and at the return. Every byte of JSON and every counter is compared, on synthetic pages of formats
laid out as the kernel lays out these events, with anomalies (an ip below its delta, records cut short)
that the native emitter hands to the record path."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_rawemit import count_fallbacks, identity_of, state
from tests.unit.test_rawpage import PAGE, Spec, encode_event, encode_record, layout
from tests.unit.twins import native as native_twins
from uprobe_exporter.backend import PYTHON
from uprobe_exporter.decode.rawpage import RawDecoder
from uprobe_exporter.decode.records import LostEvents, TraceRecord
from uprobe_exporter.kernel.formatfile import EventFormat, parse_format
from uprobe_exporter.pipeline.pairing import Pairing
from uprobe_exporter.pipeline.raw import RawPipeline
from uprobe_exporter.pipeline.render import EventInfo, Renderer
from uprobe_exporter.plan.config import ProbeConfig
from uprobe_exporter.plan.kernelabi import GO_STACK_TOP

COMMON = ("\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
          "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
          "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
          "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n")
SIZES = {"u64": 8, "s64": 8, "u32": 4, "s32": 4, "u8": 1, "unsigned long": 8}


def event(name: str, ident: int, fields: list[tuple[str, str]], ends_call: bool = False) -> EventFormat:
    """A format file as the kernel writes it: (type, name) laid out from offset 8."""
    lines, at = [], 8
    for type_, fname in fields:
        if type_ == "string":
            decl, size, signed = f"__data_loc char[] {fname}", 4, 1
        elif fname.endswith("[]"):
            decl, size, signed = f"{type_} {fname}", 8 * SIZES[type_], 0  # 8 elements
        elif type_ == "char":
            decl, size, signed = f"u8 {fname}", 1, 0
        else:
            decl, size, signed = f"{type_} {fname}", SIZES[type_], int(type_.startswith("s"))
        lines.append(f"\tfield:{decl};\toffset:{at};\tsize:{size};\tsigned:{signed};\n")
        at += size
    chars = " ".join(f"{fname}='%c'" for type_, fname in fields if type_ == "char")  # how a char is told apart
    text = f"name: {name}\nID: {ident}\nformat:\n{COMMON}\n{''.join(lines)}\nprint fmt: \"{chars}\"\n"
    return dataclasses.replace(parse_format(text), ends_call=ends_call)


HIDDEN_GO = [("u64", "__g"), ("u64", "__g_hi"), ("u32", "__ip_delta")]
FORMATS = (
    # a Go function: entry and returns at its RET instructions, per goroutine; a Go string argument
    event("h_entry", 3001, [("unsigned long", "__probe_ip"), ("string", "__comm"), ("u64", "__sp"), *HIDDEN_GO,
                            ("u64", "s[]"), ("s64", "__len_s"), ("s32", "n"), ("u8", "arr[]")]),
    event("h_return", 3002, [("unsigned long", "__probe_ip"), ("string", "__comm"), ("u64", "__sp_ret"),
                             ("u64", "__ret_addr"), *HIDDEN_GO, ("s64", "r")], ends_call=True),
    # a C function whose returns are seen at RET instructions (no uretprobe)
    event("w_entry", 3003, [("unsigned long", "__probe_ip"), ("string", "__comm"), ("u64", "__sp"),
                            ("string", "name"), ("s32", "n"), ("char", "c")]),
    event("w_return", 3004, [("unsigned long", "__probe_ip"), ("string", "__comm"), ("u64", "__sp_ret"),
                             ("u64", "__ret_addr"), ("u32", "__ip_delta"), ("s64", "ret"), ("string", "tag")],
          ends_call=True),
    # USDT: a return closes the innermost entry only if its fn and line agree
    event("u_entry", 3005, [("unsigned long", "__probe_ip"), ("string", "__comm"), ("u64", "__sp"),
                            ("string", "fn"), ("s32", "line")]),
    event("u_return", 3006, [("unsigned long", "__probe_ip"), ("string", "__comm"), ("u64", "__sp"),
                             ("string", "fn"), ("s32", "line")], ends_call=True),
)
BY_NAME = {f.name: f for f in FORMATS}
# per probe: histogram labels from entry args, return args, comm, pods
LABELS: dict[str, dict[str, tuple[str, ...]]] = {
    "args": {"h": ("s", "comm", "k8s_pod_name", "arr"), "w": ("name", "tag", "n", "c"), "u": ("fn", "line", "comm")},
    "return": {"h": ("r", "n"), "w": ("ret", "comm"), "u": ("fn",)},
    "comm": {"h": ("comm",), "w": ("comm",), "u": ("comm",)},
    "none": {"h": (), "w": (), "u": ()},
}
STRINGS = [b'say "hi"', b"line one\nline two", b"\xff\xfe not utf-8", b"back\\slash", b"plain", b"", b"%d %s"]


def probes(labels: dict[str, tuple[str, ...]]) -> tuple[ProbeConfig, ...]:
    buckets = (1e-6, 1e-5, 1e-4)
    return (
        ProbeConfig(name="h", binary="/go", function="main.h", args=(("s", "x"), ("n", "x"), ("arr", "x")),
                    return_probe=True, return_args=(("r", "x"),), latency=True, labels=labels["h"], buckets=buckets,
                    return_via="ret_instructions"),
        ProbeConfig(name="w", binary="/c", function="w", args=(("name", "x"), ("n", "x"), ("c", "x")),
                    return_probe=True, return_args=(("ret", "x"), ("tag", "x")), latency=True, labels=labels["w"],
                    buckets=buckets, return_via="ret_instructions"),
        ProbeConfig(name="u", binary="/py", usdt="python:function__entry", return_usdt="python:function__return",
                    args=(("fn", "x"), ("line", "x")), return_probe=True, return_args=(("fn", "x"), ("line", "x")),
                    latency=True, labels=labels["u"], buckets=buckets),
    )


def pipelines(labels: dict[str, tuple[str, ...]], render: bool) -> tuple[RawPipeline, RawPipeline]:
    """The record path (pure Python) and the native emitters, each with its own state."""
    made = []
    for twins in (PYTHON, native_twins()):
        infos = {f.name: EventInfo(f.name[0], "return" if f.is_return else "entry", f"g/{f.name}", labels[f.name[0]],
                                   f.name[0] == "u") for f in FORMATS}
        made.append(RawPipeline(infos, probes(labels), Renderer(10**18, identity_of=identity_of) if render else None,
                                Pairing(max_pending=64, twin=twins.pairing), twins, 3, lambda tid: tid // 2,
                                identity_of=identity_of))
    return made[0], made[1]


def words(raw: bytes) -> list[int]:
    padded = raw[:64] + b"\0" * (64 - len(raw[:64]))
    return list(struct.unpack("<8Q", padded))


@st.composite
def calls(draw: st.DrawFn) -> list[tuple[str, int, dict[str, Any]]]:
    """Records of nested calls: Go goroutines moving between the threads of their process (stacks copied
    on the way), C calls returning at RET instructions, USDT calls with returns that do not match; each
    (event, tid, values)."""
    text = st.one_of(st.sampled_from(STRINGS), st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"@")))
    comms = st.sampled_from([b"main", b"w-0 a\"b", b"\xc3\xa9t\xe9", None])
    # the same g in both processes (Go heaps sit at the same addresses), no g, a g without stack bounds
    goroutines = [(0xC000_0010_00, 0xC000_8000), (0xC000_0010_00, 0xC001_0000), (0, 0), (0xC000_0030_00, 0)]
    stacks: dict[tuple[str, int], list[tuple[int, dict[str, Any]]]] = {}
    out: list[tuple[str, int, dict[str, Any]]] = []
    for _ in range(draw(st.integers(1, 60))):
        probe = draw(st.sampled_from("hwu"))
        who = draw(st.integers(0, 3))  # a goroutine (h) or a thread (w, u)
        # a goroutine runs on either thread of its process (tgid_of: tid // 2)
        tid = 10 + who if probe != "h" else draw(st.sampled_from([10, 11] if who % 2 else [12, 13]))
        stack = stacks.setdefault((probe, who), [])
        common: dict[str, Any] = {"__comm": draw(comms), "__probe_ip": draw(st.integers(0x1000, 0x7FFF_FFFF))}
        anomaly = draw(st.integers(0, 19)) == 0
        if not stack or draw(st.booleans()):  # a call
            sp = 0x7FF0_0000 - 0x40 * len(stack) - draw(st.integers(0, 3)) * 8
            if probe == "h":
                g, hi = goroutines[who]
                raw = draw(text)
                values = {**common, "__sp": sp, "__g": g, "__g_hi": hi, "__ip_delta": draw(st.integers(0, 0x40)),
                          "s": words(raw), "__len_s": draw(st.sampled_from([len(raw), -1, 100, 0])),
                          "n": draw(st.integers(-5, 5)), "arr": draw(st.lists(st.integers(0, 255), min_size=8,
                                                                               max_size=8))}
            elif probe == "w":
                values = {**common, "__sp": sp, "name": draw(st.one_of(st.none(), text)), "n": draw(st.integers(-5, 5)),
                          "c": draw(st.sampled_from([0x22, 0x0A, 0x41, 0x5C, 0x80, 0xFF]))}
            else:
                values = {**common, "__sp": sp, "fn": draw(text), "line": draw(st.integers(0, 3))}
            stack.append((sp, values))
            out.append((f"{probe}_entry", tid, values))
        else:  # a return, of the innermost call (or, now and then, a frame the unwinder skipped)
            sp, entry = stack.pop() if draw(st.integers(0, 5)) else stack.pop(0)
            ret_addr = draw(st.integers(0, (1 << 64) - 1))
            if probe == "h":
                g, hi = goroutines[who]
                moved = draw(st.sampled_from([0, 0, 0x10_0000]))  # the goroutine's stack was copied
                values = {**common, "__sp_ret": sp + moved if hi else sp, "__ret_addr": ret_addr, "__g": g,
                          "__g_hi": hi + moved if hi else 0, "__ip_delta": draw(st.integers(0, 0x40)) if not anomaly
                          else common["__probe_ip"] + 1, "r": draw(st.integers(-(1 << 63), (1 << 63) - 1))}
            elif probe == "w":
                values = {**common, "__sp_ret": sp, "__ret_addr": ret_addr,
                          "__ip_delta": draw(st.integers(0, 0x40)) if not anomaly else common["__probe_ip"] + 9,
                          "ret": draw(st.integers(-9, 9)),
                          "tag": draw(st.one_of(st.none(), text))}
            else:
                same = draw(st.integers(0, 3))
                values = {**common, "__sp": 0, "fn": entry["fn"] if same else draw(text),
                          "line": entry["line"] if same != 1 else entry["line"] + 1}
            out.append((f"{probe}_return", tid, values))
    return out


def paged(records: list[tuple[str, int, dict[str, Any]]], base: int, cut: int | None) -> list[bytes]:
    """The records in pages of one CPU; ``cut``: the last record of a page cut short (its length)."""
    pages, data = [], b""
    for i, (name, tid, values) in enumerate(records):
        payload = encode_record(Spec(BY_NAME[name], tid, 0, values))
        if cut is not None and i == len(records) - 1:
            payload = payload[:max(8, min(cut, len(payload)))]
        ev = encode_event(payload, 1000 + i, False)
        if len(data) + len(ev) > PAGE - 16:
            pages.append(data)
            data = b""
        data += ev
    pages.append(data)
    out, ts = [], base
    for d in pages:
        out.append((struct.pack("=QQ", ts, len(d)) + d).ljust(PAGE, b"\0"))
        ts += 10**9
    return out


def compare(labels: dict[str, tuple[str, ...]], render: bool, pages: list[bytes]) -> tuple[bytes, RawPipeline, int]:
    """The same pages through the record path and the native emitters: the same bytes and counters; and
    how many records the native emitters handed to the record path (anomalies only)."""
    by_record, native = pipelines(labels, render)
    fallbacks = count_fallbacks(native)
    handlers = native.emitters(FORMATS)
    emit_plan = native.backend.emit_plan
    assert emit_plan is not None
    assert all(isinstance(h, emit_plan) for h in handlers.values()), "every kind of event has its native emitter"
    records = RawDecoder.for_formats(layout(), FORMATS)
    records.errors = by_record.decode_errors
    locator = RawDecoder(layout(), handlers, native.decode_errors, native.backend.walk)
    recs: list[TraceRecord | LostEvents] = []
    merge = native.backend.new_merge()
    run = merge.new_run()
    for page in pages:
        records.decode(page, 0, recs)
        locator.locate(page, 0, run, [])
    a = by_record.process_items(recs)
    b = native.process_located(merge.push([run], 0, final=True), [])
    assert a == b
    assert state(native) == state(by_record)
    return a[0] if a is not None else b"", by_record, fallbacks[0]


@settings(max_examples=150, deadline=None)
@given(calls(), st.sampled_from(list(LABELS)), st.booleans(), st.integers(0, 1 << 62),
       st.one_of(st.none(), st.integers(8, 60)))
def test_every_kind_of_event_gives_the_same_output_natively(
        records: list[tuple[str, int, dict[str, Any]]], labels: str, render: bool, base: int, cut: int | None) -> None:
    compare(LABELS[labels], render, paged(records, base, cut))


@pytest.mark.parametrize("labels", list(LABELS))
def test_a_fixed_run_of_every_kind_pairs_and_labels_natively(labels: str) -> None:
    """One run with every kind in it, checked for what it must hold besides being equal both ways: Go
    calls paired across threads and a stack copy, USDT returns without their entry, labels from strings."""
    g, hi = 0xC000_0010_00, 0xC000_8000
    s = b'say "hi"\n\xff'
    records: list[tuple[str, int, dict[str, Any]]] = [
        ("h_entry", 10, {"__probe_ip": 0x4000, "__comm": b"main", "__sp": 0xC000_7F00, "__g": g, "__g_hi": hi,
                         "__ip_delta": 4, "s": words(s), "__len_s": len(s), "n": 3, "arr": list(range(8))}),
        ("w_entry", 12, {"__probe_ip": 0x5000, "__comm": b"w-0", "__sp": 0x7F00, "name": s, "n": 1, "c": 0xE9}),
        ("u_entry", 12, {"__probe_ip": 0x6000, "__comm": b"w-0", "__sp": 0x7E00, "fn": b"f\"x", "line": 1}),
        ("u_return", 12, {"__probe_ip": 0x6000, "__comm": b"w-0", "__sp": 0, "fn": b"other", "line": 1}),
        ("u_return", 12, {"__probe_ip": 0x6000, "__comm": b"w-0", "__sp": 0, "fn": b"f\"x", "line": 1}),
        ("w_return", 12, {"__probe_ip": 0x5020, "__comm": b"w-0", "__sp_ret": 0x7F00, "__ret_addr": 0x1234,
                          "__ip_delta": 0x20, "ret": 7, "tag": b"t\n"}),
        # the goroutine moved to another thread of its process, and its stack was copied 1 MiB higher
        ("h_return", 11, {"__probe_ip": 0x4040, "__comm": b"main", "__sp_ret": 0xC010_7F00, "__ret_addr": 0x99,
                          "__g": g, "__g_hi": hi + 0x10_0000, "__ip_delta": 0x40, "r": -1}),
    ]
    out, p, fallbacks = compare(LABELS[labels], True, paged(records, 10**9, None))
    assert fallbacks == 0, "every record of a clean run is emitted natively"
    pairs = p.pairing.statistics()
    assert pairs.paired_by_probe == {"h": 1, "w": 1, "u": 1} and pairs.returns_without_entry_by_probe == {"u": 1}
    assert b'"s":"say \\"hi\\"\\n\\\\xff"' in out and b'"func":"0x4000","ret_ip":"0x99"' in out
    if labels == "args":
        assert set(p.histograms["h"].series) == {('say "hi"\n\\xff', "main", "", "[0, 1, 2, 3, 4, 5, 6, 7]")}
        assert set(p.histograms["w"].series) == {('say "hi"\n\\xff', "t\n", "1", "\\xe9")}
    assert hi < GO_STACK_TOP
