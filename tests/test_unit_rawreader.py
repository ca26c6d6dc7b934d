"""rawreader.CpuMerge: per-CPU runs of located records come out in one timestamp order; young records
wait, bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from uprobe_exporter.rawpage import Located
from uprobe_exporter.rawreader import CpuMerge


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
