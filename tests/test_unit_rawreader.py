"""rawreader.CpuMerge: per-CPU runs of located records come out in one timestamp order; young records
wait, bounded; its native twin does exactly the same."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_unit_rawpage import PAGE, Spec, encode_event, encode_record, layout
from tests.test_unit_traceline import formats
from uprobe_exporter.rawpage import Located, RawDecoder
from uprobe_exporter.rawreader import CpuMerge, NativeCpuMerge, RawPipeReader, cpu_merge


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


def held_count(merge: CpuMerge | NativeCpuMerge) -> int:
    return merge.held if isinstance(merge, NativeCpuMerge) else len(merge.held)


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
        decoder = RawDecoder(layout(), handlers, native=native)
        merge = cpu_merge(decoder, hold_ns, max_held)
        assert isinstance(merge, NativeCpuMerge) == native
        out = []
        for batch, now in zip(batches, sorted(nows), strict=False):
            runs = []
            for cpu, cpu_pages in enumerate(batch):
                run = merge.new_run()
                for page in cpu_pages:
                    decoder.locate(page, cpu, run, [])
                runs.append(run)
            out.append((list(merge.push(runs, now)), held_count(merge)))
        out.append((list(merge.push([], 0, final=True)), held_count(merge)))
        results.append(out)
    assert results[0] == results[1]


def full_page(first_ts: int, step: int, records: int = 80) -> bytes:
    """A page with ``records`` records ``step`` ns apart from ``first_ts`` (over half full)."""
    fmt = next(f for f in formats() if f.name == "recurse_entry")
    spec = Spec(fmt, 7, step, {"__probe_ip": 1, "__comm": b"t", "__sp": 2, "n": 3})
    data = encode_event(encode_record(Spec(fmt, 7, 0, spec.values)), 0, False)
    data += b"".join(encode_event(encode_record(spec), step, False) for _ in range(records - 1))
    page = struct.pack("=QQ", first_ts, len(data)) + data
    assert len(page) <= PAGE and layout().half_full(page + b"\0" * (PAGE - len(page)))
    return page + b"\0" * (PAGE - len(page))


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_cpu_read_only_in_part_holds_back_the_others(tmp_path: Path, native: bool) -> None:
    """CPU 0 has more pages than a turn reads; CPU 1's records span the same time. A turn releases
    nothing younger than the last record it read of CPU 0, so every record comes out in time order
    (an entry read late from CPU 0 still comes before its return from CPU 1)."""
    cpu_pages = {0: [full_page(1000 + i * 8000, 100) for i in range(40)],
                 1: [full_page(1050 + i * 80_000, 1000) for i in range(4)]}
    for cpu, pages in cpu_pages.items():
        (tmp_path / "per_cpu" / f"cpu{cpu}").mkdir(parents=True)
        (tmp_path / "per_cpu" / f"cpu{cpu}" / "trace_pipe_raw").write_bytes(b"".join(pages))
    decoder = RawDecoder.for_formats(layout(), formats())
    decoder.native = native
    released: list[int] = []
    reader = RawPipeReader(tmp_path, [0, 1], decoder, lambda located, lost: released.extend(r[0] for r in located),
                           pages_per_turn=32)
    assert isinstance(reader.merge, NativeCpuMerge) == native
    try:
        assert reader.read_available(32) == 32 + 4 and reader.behind
        assert released and max(released) <= 1000 + 31 * 8000 + 79 * 100, "CPU 0's unread pages are older"
        while reader.read_available(32):
            pass
        reader.drain()
    finally:
        reader.close()
    assert len(released) == 44 * 80 and released == sorted(released)
