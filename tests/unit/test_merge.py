"""merge.CpuMerge: per-CPU runs of located records come out in one timestamp order; young records wait,
bounded; its native twin (_native.Merge) does exactly the same."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_rawpage import PAGE, Spec, encode_event, encode_record, layout
from tests.unit.test_traceline import formats
from tests.unit.twins import backend
from uprobe_exporter.backend import NativeCpuMerge
from uprobe_exporter.decode.merge import CpuMerge
from uprobe_exporter.decode.rawpage import Located, RawDecoder


def handler(page: bytes, offset: int, ts: int, cpu: int) -> None:
    raise AssertionError("the merge never runs handlers")


def rec(cpu: int, ts: int) -> Located:
    return (ts, handler, b"", 0, cpu)


def cpu_ts(r: Located) -> tuple[int, int]:
    return r[4], r[0]


def test_a_thread_that_migrated_pairs_in_order() -> None:
    """The return was read from CPU 1 before its entry from CPU 0 got read: both come out in order."""
    merge = CpuMerge(hold_ns=1000)
    assert merge.push([[], [rec(1, 5000)]], now_ns=5500) == []  # younger than the hold: waits
    out = merge.push([[rec(0, 4000)], []], now_ns=9000)
    assert [cpu_ts(r) for r in out] == [(0, 4000), (1, 5000)]
    assert merge.held == []


def test_held_records_are_bounded_and_released_at_the_end() -> None:
    merge = CpuMerge(hold_ns=10**9, max_held=3)
    out = merge.push([[rec(0, t) for t in range(10)]], now_ns=100)
    assert [r[0] for r in out] == list(range(7)) and len(merge.held) == 3
    assert [r[0] for r in merge.push([], now_ns=100, final=True)] == [7, 8, 9]
    assert merge.push([], now_ns=100) == []


@given(st.lists(st.lists(st.integers(0, 10**6), max_size=30), min_size=1, max_size=4),
       st.lists(st.integers(0, 10**6), min_size=1, max_size=5))
def test_any_batches_come_out_complete(cpus: list[list[int]], nows: list[int]) -> None:
    merge = CpuMerge(hold_ns=1000)
    runs = [[rec(cpu, t) for t in sorted(stamps)] for cpu, stamps in enumerate(cpus)]
    out: list[Located] = []
    for i, now in enumerate(sorted(nows)):  # each run split over the batches
        batch = [run[i * len(run) // len(nows):(i + 1) * len(run) // len(nows)] for run in runs]
        out += merge.push(batch, now)
    out += merge.push([], nows[-1], final=True)
    assert sorted(out, key=lambda r: (r[0], r[4])) == sorted((r for run in runs for r in run),
                                                                key=lambda r: (r[0], r[4]))


# --- the native merge (_native.Merge) against CpuMerge, on pages the walks located -----------------------

@st.composite
def merge_pages(draw: st.DrawFn) -> bytes:
    """A page of records close in time (ties and interleaving across CPUs), some with an absolute time
    stamp that goes back (a run out of order, as only a corrupt page has)."""
    fmt = next(f for f in formats() if f.name == "recurse_entry")
    data = b""
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.integers(0, 7)) == 0:
            data += struct.pack("=II", (draw(st.integers(0, 40)) << 5) | 31, 0)
        spec = Spec(fmt, draw(st.integers(1, 4)), draw(st.integers(0, 3)),
                    {"__probe_ip": 1, "__comm": b"t", "__sp": 2, "n": 3})
        data += encode_event(encode_record(spec), spec.delta, False)
    page = struct.pack("=QQ", draw(st.integers(0, 30)), len(data)) + data
    return page + b"\0" * (PAGE - len(page))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.lists(merge_pages(), max_size=3), min_size=1, max_size=3), min_size=1, max_size=4),
       st.lists(st.integers(0, 80), min_size=4, max_size=4), st.integers(0, 20), st.integers(0, 6))
def test_the_native_merge_is_the_python_merge(batches: list[list[list[bytes]]], nows: list[int], hold_ns: int,
                                               max_held: int) -> None:
    """Batches of per-CPU pages, walked into each merge: the same records released in the same order (ties
    between CPUs and with held records, runs out of order), the same held back, and all of them at the
    end."""
    handlers = RawDecoder.for_formats(layout(), formats()).handlers
    results = []
    for native in (False, True):
        decoder = RawDecoder(layout(), handlers, walk=backend(native).walk)
        merge = backend(native).new_merge(hold_ns, max_held)
        assert isinstance(merge, NativeCpuMerge) == native
        out = []
        for batch, now in zip(batches, sorted(nows), strict=False):
            runs = []
            for cpu, cpu_pages in enumerate(batch):
                run = merge.new_run()
                for page in cpu_pages:
                    decoder.locate(page, cpu, run, [])
                runs.append(run)
            out.append((list(merge.push(runs, now)), merge.waiting))
        out.append((list(merge.push([], 0, final=True)), merge.waiting))
        results.append(out)
    assert results[0] == results[1]
