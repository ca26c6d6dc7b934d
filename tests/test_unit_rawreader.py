"""rawreader.CpuMerge: per-CPU runs come out in one timestamp order; young records wait, bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from uprobe_exporter.rawreader import CpuMerge
from uprobe_exporter.records import TraceRecord


def rec(cpu: int, ts: int) -> TraceRecord:
    return TraceRecord("e", 1, 1, cpu, ts, "c", 0, 0, False, 0, {})


def test_a_thread_that_migrated_pairs_in_order() -> None:
    """The return was read from CPU 1 before its entry from CPU 0 got read: both come out in order."""
    merge = CpuMerge(hold_ns=1000)
    assert merge.push([[], [rec(1, 5000)]], now_ns=5500) == []  # younger than the hold: waits
    out = merge.push([[rec(0, 4000)], []], now_ns=9000)
    assert [(r.cpu, r.ts_ns) for r in out] == [(0, 4000), (1, 5000)]
    assert merge.held == []


def test_held_records_are_bounded_and_released_at_the_end() -> None:
    merge = CpuMerge(hold_ns=10**9, max_held=3)
    out = merge.push([[rec(0, t) for t in range(10)]], now_ns=100)
    assert [r.ts_ns for r in out] == list(range(7)) and len(merge.held) == 3
    assert [r.ts_ns for r in merge.push([], now_ns=100, final=True)] == [7, 8, 9]
    assert merge.push([], now_ns=100) == []


@given(st.lists(st.lists(st.integers(0, 10**6), max_size=30), min_size=1, max_size=4),
       st.lists(st.integers(0, 10**6), min_size=1, max_size=5))
def test_any_batches_come_out_complete(cpus: list[list[int]], nows: list[int]) -> None:
    merge = CpuMerge(hold_ns=1000)
    runs = [[rec(cpu, t) for t in sorted(stamps)] for cpu, stamps in enumerate(cpus)]
    out: list[TraceRecord] = []
    for i, now in enumerate(sorted(nows)):  # each run split over the batches
        batch = [run[i * len(run) // len(nows):(i + 1) * len(run) // len(nows)] for run in runs]
        out += merge.push(batch, now)
    out += merge.push([], nows[-1], final=True)
    assert sorted(out, key=lambda r: (r.ts_ns, r.cpu)) == sorted((r for run in runs for r in run),
                                                                key=lambda r: (r.ts_ns, r.cpu))
