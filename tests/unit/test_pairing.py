"""pairing: entries and returns paired by stack pointer, with unwinding, fallbacks and bounded memory."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.twins import backend
from uprobe_exporter.decode.records import TraceRecord
from uprobe_exporter.decode.traceline import TextParser
from uprobe_exporter.kernel.formatfile import parse_format
from uprobe_exporter.pipeline.pairing import CAPACITY, THREAD_EXIT, UNWOUND, Frame, Pairing

KERNEL = Path(__file__).parent.parent / "fixtures" / "kernel"
SP = 0x7FFC_0000_1000  # a stack address; a deeper frame has a lower sp
RET = 8  # the return address popped by `ret` on x86-64


class Totals(NamedTuple):
    pending: int
    paired: int
    returns_without_entry: int
    unwound: int
    thread_exit: int
    capacity: int


def stats(p: Pairing) -> Totals:
    """The totals of ``statistics()``, evictions split by reason, after checking the per-probe numbers add up."""
    s = p.statistics()
    assert sum(s.pending_by_probe.values()) == s.pending
    assert sum(s.paired_by_probe.values()) == s.paired
    assert sum(s.returns_without_entry_by_probe.values()) == s.returns_without_entry
    assert sum(s.evicted_by_probe.values()) == s.evicted
    by_reason: Counter[str] = Counter()
    for (_, reason), n in s.evicted_by_probe.items():
        by_reason[reason] += n
    assert set(by_reason) <= {UNWOUND, THREAD_EXIT, CAPACITY}
    return Totals(s.pending, s.paired, s.returns_without_entry, by_reason[UNWOUND], by_reason[THREAD_EXIT],
                  by_reason[CAPACITY])


def fixture_records() -> list[TraceRecord]:
    parser = TextParser.for_formats(parse_format(f.read_text(encoding="utf-8")) for f in KERNEL.glob("*.format"))
    lines = (KERNEL / "calls.trace_pipe").read_bytes().decode("latin-1").split("\n")[:-1]
    items, errors = parser.parse_lines(lines, final=True)
    assert errors == []
    return [i for i in items if isinstance(i, TraceRecord)]


def test_one_call() -> None:
    p = Pairing()
    p.enter("f", 1, SP, 100, extra="x")
    assert stats(p) == Totals(1, 0, 0, 0, 0, 0)
    frame = p.leave("f", 1, SP + RET)
    assert frame == Frame(SP, 100, "x")
    assert stats(p) == Totals(0, 1, 0, 0, 0, 0)
    assert p.threads() == set()


def test_recursion_pairs_by_stack_pointer() -> None:
    p = Pairing()
    for depth in range(4):
        p.enter("rec", 7, SP - 0x20 * depth, 10 + depth, extra=depth)
    assert stats(p).pending == 4
    got = [p.leave("rec", 7, SP - 0x20 * depth + RET) for depth in (3, 2, 1, 0)]
    assert [f.extra if f else None for f in got] == [3, 2, 1, 0]
    assert [f.ts_ns if f else None for f in got] == [13, 12, 11, 10]
    assert stats(p) == Totals(0, 4, 0, 0, 0, 0)


def test_new_entry_at_or_above_a_pending_frame_unwinds_the_deeper_ones() -> None:
    """longjmp back to a frame above: the next call reuses the stack space of the abandoned ones."""
    p = Pairing()
    for depth in range(3):
        p.enter("f", 1, SP - 0x40 * depth, depth)
    p.enter("f", 1, SP - 0x40, 50)  # same sp as depth 1: depth 1 and 2 never returned
    assert stats(p) == Totals(2, 0, 0, 2, 0, 0)
    frame = p.leave("f", 1, SP - 0x40 + RET)
    assert frame is not None
    assert frame.ts_ns == 50
    p.enter("f", 1, SP + 0x100, 60)  # above everything: the frame at SP is gone too
    assert stats(p) == Totals(1, 1, 0, 3, 0, 0)
    assert p.leave("f", 1, SP + RET) is None
    assert stats(p).returns_without_entry == 1


def test_return_above_pending_frames_evicts_them() -> None:
    """A C++ exception or longjmp past frames, then an outer function returns."""
    p = Pairing()
    for depth in range(3):
        p.enter("f", 1, SP - 0x40 * depth, depth)
    frame = p.leave("f", 1, SP - 0x40 + RET)  # depth 1 returns: depth 2 was unwound
    assert frame is not None
    assert frame.ts_ns == 1
    assert stats(p) == Totals(1, 1, 0, 1, 0, 0)
    assert p.leave("f", 1, SP + 0x1000) is None  # above the frame at SP: it was unwound, this one unseen
    assert stats(p) == Totals(0, 1, 1, 2, 0, 0)
    assert p.threads() == set()


def test_returns_without_entry() -> None:
    p = Pairing()
    assert p.leave("f", 1, SP) is None  # nothing pending at all
    p.enter("f", 1, SP, 1)
    assert p.leave("g", 1, SP + RET) is None  # another probe
    assert p.leave("f", 2, SP + RET) is None  # another thread
    assert p.leave("f", 1, SP - 0x100 + RET) is None  # a deeper call whose entry was not seen
    assert stats(p) == Totals(1, 0, 4, 0, 0, 0)
    assert p.leave("f", 1, SP + RET) is not None  # the pending one is still there


def test_without_stack_pointer_pairs_innermost_first() -> None:
    p = Pairing()
    for ts in (1, 2, 3):
        p.enter("f", 1, 0, ts)
    assert stats(p) == Totals(3, 0, 0, 0, 0, 0)  # sp 0 proves no unwinding
    got = [p.leave("f", 1, 0) for _ in range(4)]
    assert [f.ts_ns if f else None for f in got] == [3, 2, 1, None]
    assert stats(p) == Totals(0, 3, 1, 0, 0, 0)


def test_leave_matching_closes_only_the_same_function() -> None:
    """A USDT return (CPython: function__return of a frame whose entry was not fired) closes the innermost
    entry only when the labels agree; otherwise it is a return without entry and the entry stays."""
    for native in (True, False):
        p = Pairing(twin=backend(native).pairing)
        p.enter("py", 1, 0, 10, ("outer", "a.py"))
        p.enter("py", 1, 0, 20, ("leaf", "a.py"))
        assert p.leave_matching("py", 1, ("middle", None)) is None  # middle's entry was never seen
        frame = p.leave_matching("py", 1, ("leaf", None))
        assert frame is not None and frame.ts_ns == 20
        assert p.leave_matching("py", 1, (None, "b.py")) is None
        frame = p.leave_matching("py", 1, ("outer", "a.py"))
        assert frame is not None and frame.ts_ns == 10
        assert p.leave_matching("py", 1, ("outer", None)) is None  # nothing open
        assert p.leave_matching("py", 2, ()) is None
        assert stats(p) == Totals(0, 2, 4, 0, 0, 0)


def test_leave_matching_refuses_an_entry_without_those_labels_the_same_way() -> None:
    """Both twins: an entry whose extra has no item where the return wants one is a ValueError (never a
    different exception per twin); a want of only None items closes it."""
    for native in (True, False):
        p = Pairing(twin=backend(native).pairing)
        p.enter("py", 1, 0, 10, None)
        p.enter("py", 1, 0, 20, ("f",))
        with pytest.raises(ValueError, match="no such item"):
            p.leave_matching("py", 1, (None, "x"))
        assert p.leave_matching("py", 1, ("f", None)) is not None
        with pytest.raises(ValueError, match="no such item"):
            p.leave_matching("py", 1, ("f",))
        assert p.leave_matching("py", 1, (None,)) is not None


def test_leave_matching_does_not_close_an_entry_that_a_comparison_replaced() -> None:
    """The native twin compares label values with ==, which can run Python code; if that code changes the
    thread's stack, the entry it compared is no longer the innermost: the return closes nothing."""

    class Sneaky(str):
        __slots__ = ()

        def __eq__(self, other: object) -> bool:
            pairing.enter("py", 1, 0, 30, ("other",))  # a new innermost entry while comparing
            return str.__eq__(self, other)

        __hash__ = str.__hash__

    pairing = Pairing(twin=backend(True).pairing)
    pairing.enter("py", 1, 0, 10, (Sneaky("f"),))
    assert pairing.leave_matching("py", 1, ("f",)) is None
    frame = pairing.leave_matching("py", 1, ("other",))
    assert frame is not None and frame.ts_ns == 30


def test_evict_thread() -> None:
    p = Pairing()
    p.enter("f", 5, SP, 1)
    p.enter("f", 5, SP - 0x40, 2)
    p.enter("g", 5, SP - 0x80, 3)
    p.enter("f", 6, SP, 4)
    assert p.threads() == {5, 6}
    assert p.evict_thread(5) == 3
    assert p.evict_thread(5) == 0
    assert p.evict_thread(99) == 0
    assert p.threads() == {6}
    assert stats(p) == Totals(1, 0, 0, 0, 3, 0)
    assert p.leave("f", 5, SP - 0x40 + RET) is None


def test_max_depth_drops_the_outermost_frames() -> None:
    p = Pairing(max_depth=3)
    for depth in range(5):
        p.enter("f", 1, SP - 0x20 * depth, depth)
    assert stats(p) == Totals(3, 0, 0, 0, 0, 2)
    got = [p.leave("f", 1, SP - 0x20 * depth + RET) for depth in (4, 3, 2, 1, 0)]
    assert [f.ts_ns if f else None for f in got] == [4, 3, 2, None, None]
    assert stats(p) == Totals(0, 3, 2, 0, 0, 2)


def test_max_pending_drops_from_the_least_recently_active_thread() -> None:
    p = Pairing(max_pending=4)
    for tid in range(1, 7):
        p.enter("f", tid, SP, tid)
        assert stats(p).pending <= 4
    assert p.threads() == {3, 4, 5, 6}
    assert stats(p) == Totals(4, 0, 0, 0, 0, 2)
    p.enter("f", 3, SP - 0x40, 30)  # thread 3 is active again; 4 is now the least recent
    assert p.threads() == {3, 5, 6}
    assert stats(p) == Totals(4, 0, 0, 0, 0, 3)
    assert p.leave("f", 3, SP - 0x40 + RET) is not None
    assert p.leave("f", 3, SP + RET) is not None


OPS = st.lists(st.tuples(
    st.sampled_from(["enter", "leave", "exit"]), st.sampled_from(["f", "g"]), st.integers(1, 4),
    st.sampled_from([0, SP, SP - 0x20, SP - 0x40, SP - 0x60, SP + RET, SP - 0x20 + RET, SP - 0x40 + RET]),
), max_size=200)


@settings(max_examples=50, deadline=None)
@given(OPS, st.integers(1, 6), st.integers(1, 4))
def test_every_entry_is_accounted_for_and_memory_stays_bounded(
    ops: list[tuple[str, str, int, int]], max_pending: int, max_depth: int,
) -> None:
    p = Pairing(max_pending=max_pending, max_depth=max_depth)
    entries = returns = 0
    for ts, (op, probe, tid, sp) in enumerate(ops):
        if op == "enter":
            p.enter(probe, tid, sp, ts)
            entries += 1
        elif op == "leave":
            frame = p.leave(probe, tid, sp)
            returns += 1
            if frame is not None and sp:
                assert frame.sp == sp - RET
        else:
            p.evict_thread(tid)
        s = stats(p)
        assert s.pending == sum(len(stack) for stack in p.stacks.values())
        assert s.pending <= max_pending
        assert all(len(stack) <= max_depth for stack in p.stacks.values())
        assert len(p.stacks) <= max(max_pending, 1) + 1, "empty stacks are dropped past max_pending"
        assert entries == s.paired + s.pending + s.unwound + s.thread_exit + s.capacity
        assert returns == s.paired + s.returns_without_entry
        assert p.threads() == {tid for (_, tid), stack in p.stacks.items() if stack}


def test_the_captured_trace_pairs_completely() -> None:
    records = fixture_records()
    report = [json.loads(line) for line in (KERNEL / "calls.report.jsonl").read_text(encoding="utf-8").splitlines()]
    p = Pairing()
    pairs: list[tuple[TraceRecord, TraceRecord]] = []
    for r in records:
        probe = r.event.rsplit("_", 1)[0]
        if not r.is_return:
            p.enter(probe, r.tid, r.sp, r.ts_ns, r)
        else:
            frame = p.leave(probe, r.tid, r.sp)
            assert frame is not None, r
            pairs.append((frame.extra, r))
    n_returns = sum(r.is_return for r in records)
    # types_entry has no return probe: each of its entries is at the same sp as the thread's previous one,
    # which proves that one unwound; only the last entry of each thread stays pending.
    types = [r for r in records if r.event == "types_entry"]
    threads = {r.tid for r in types}
    assert stats(p) == Totals(len(threads), n_returns, 0, len(types) - len(threads), 0, 0)
    assert p.statistics().evicted_by_probe == {("types", UNWOUND): len(types) - len(threads)}
    assert p.statistics().paired_by_probe == {"work": sum(r.event == "work_return" for r in records),
                                              "recurse": sum(r.event == "recurse_return" for r in records)}
    assert n_returns == len(pairs)
    assert all(ret.ts_ns >= entry.ts_ns for entry, ret in pairs)
    recursion = [(e.args["n"], r.args["ret"]) for e, r in pairs if e.event == "recurse_entry"]
    assert recursion
    assert all(n == ret for n, ret in recursion)  # recurse(n) returns n
    work: Counter[tuple[int, int, int]] = Counter(
        (e.tid, e.args["a"], r.args["ret"]) for e, r in pairs if e.event == "work_entry")
    assert work == Counter((c["tid"], c["a"], c["ret"]) for c in report if c["fn"] == "work")


def test_a_stack_that_empties_is_kept_for_the_next_call_until_dropped() -> None:
    p = Pairing()
    for ts in range(3):
        p.enter("f", 7, 1000, ts)
        assert p.leave("f", 7, 1008) is not None
    assert p.stacks == {("f", 7): []} and p.threads() == set() and p.pending == 0
    p.drop_empty()
    assert not p.stacks


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["enter", "leave", "exit", "drop", "match"]), st.sampled_from(["f", "g", "h"]), st.integers(1, 5),
    st.sampled_from([0, 3, SP, SP - 0x20, SP - 0x40, SP - 0x60, SP + RET, SP - 0x20 + RET, SP - 0x40 + RET]),
), max_size=300), st.integers(1, 6), st.integers(1, 4))
def test_the_native_pairing_is_the_python_pairing(
    ops: list[tuple[str, str, int, int]], max_pending: int, max_depth: int,
) -> None:
    """Every call, on the native pairing and on the Python reference: the same answers, stacks (in the
    same activity order) and statistics, filtered returns included (and the native one is built: CI
    compiles it)."""
    native, python = Pairing(max_pending, max_depth, backend(True).pairing), Pairing(max_pending, max_depth)
    assert type(native.core) is not type(python.core)
    for p in (native, python):  # "g" has an entry filter: its unpaired returns count as filtered
        p.set_entry_filtered(["g"])
    for ts, (op, probe, tid, sp) in enumerate(ops):
        results: list[object] = []
        for p in (native, python):
            if op == "enter":
                results.append(p.enter(probe, tid, sp, ts, (probe, ts)))
            elif op == "leave":
                results.append(p.leave(probe, tid, sp))
            elif op == "match":  # a USDT return: the innermost entry, if its extra[0] is the wanted one
                results.append(p.leave_matching(probe, tid, (("f", "g", "h")[sp % 3], None)))
            elif op == "exit":
                results.append(p.evict_thread(tid))
            else:
                results.append(p.drop_empty())
        assert results[0] == results[1]
        assert list(native.stacks.items()) == list(python.stacks.items())
        assert native.statistics() == python.statistics()
        assert native.threads() == python.threads() and native.pending == python.pending


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_unpaired_returns_of_a_probe_with_an_entry_filter_count_as_filtered(native: bool) -> None:
    p = Pairing(twin=backend(native).pairing)
    p.set_entry_filtered(["f"])
    p.enter("f", 1, SP, 10)
    assert p.leave("f", 1, SP + RET) is not None
    assert p.leave("f", 1, SP + RET) is None and p.leave("f", 2, SP + RET) is None  # entries filtered
    assert p.leave("g", 1, SP + RET) is None  # no filter: without entry
    st = p.statistics()
    assert (st.returns_filtered, st.returns_filtered_by_probe) == (2, {"f": 2})
    assert (st.returns_without_entry, st.returns_without_entry_by_probe) == (1, {"g": 1})
    assert st.paired_by_probe == {"f": 1}
