"""Pure pairing of entry and return events into calls, exactly, with bounded memory.

Strategy: one stack of pending entries per (probe, thread). Each event carries the stack pointer
(``__sp``). At a function's first instruction ``%sp`` points at the return address; after the
function returns, ``%sp`` is 8 bytes higher. So a return with ``sp`` closes the pending entry whose
``sp`` is ``sp - 8``; entries deeper than that (lower addresses) can never return: the stack was
unwound past them (longjmp, C++ exception) and they are evicted as ``unwound``. A new entry at an
``sp`` at or above a pending one proves the same. Without a stack pointer (0), pairing falls back to
innermost-call (LIFO) order. The readers give every return's ``sp`` as a uretprobe sees it (a return
seen at a RET instruction is 8 lower) and, for Go programs, key calls by goroutine instead of thread,
with a stack offset that survives stack copies (hidden.hidden_values). Threads that exit inside a
call are evicted by ``evict_thread``; past ``max_pending`` the least recently active thread loses its
oldest entry (``capacity``).

A probe whose entry event has a kernel ``filter`` and no ``return_filter`` (``set_entry_filtered``) has
returns whose entries the filter removed; those are indistinguishable from returns whose entry was never seen otherwise
(the call began before the exporter, or the kernel lost the entry), so every unpaired return of such a
probe is counted as ``returns_filtered`` instead of ``returns_without_entry`` (and not emitted).

A stack that empties is kept for the thread's next call (creating and deleting it on every call costs
as much as the pairing itself); stacks of threads that exited go with ``evict_thread``, and past
``max_pending`` stacks, and at every ``drop_empty``, the empty ones are dropped.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from uprobe_exporter.plan.kernelabi import RETURN_ADDRESS_SIZE

PID_MAX_LIMIT = 1 << 22  # include/linux/threads.h: thread ids never exceed it
GO_KEY_BASE = 1 << 40  # GoroutineKeys count up from here: a key above PID_MAX_LIMIT is a goroutine's
_new_frame = tuple.__new__  # skips the NamedTuple's Python-level __new__
UNWOUND, THREAD_EXIT, CAPACITY = "unwound", "thread_exit", "capacity"
EVICTION_REASONS = (UNWOUND, THREAD_EXIT, CAPACITY)


@dataclass(frozen=True, slots=True)
class PairingStats:
    """Totals, and per probe: pending entries, paired calls, returns without entry, evictions by reason,
    unpaired returns of probes with an entry filter."""

    pending: int
    paired: int
    returns_without_entry: int
    evicted: int
    pending_by_probe: dict[str, int]
    paired_by_probe: dict[str, int]
    returns_without_entry_by_probe: dict[str, int]
    evicted_by_probe: dict[tuple[str, str], int]  # (probe, reason)
    returns_filtered: int = 0
    returns_filtered_by_probe: dict[str, int] = field(default_factory=dict)


class GoroutineKeys:
    """Pairing keys of Go goroutines: one per (process, g). A g is a heap address, and Go programs put
    their heaps at the same addresses (0xc000000000…), so two processes — two replicas of one service —
    have goroutines with the same g; the process keeps them apart. Keys count up from GO_KEY_BASE, above
    every thread id (PID_MAX_LIMIT), so housekeeping tells them from threads, and ``owner`` says whose
    they are: their pending calls go when that process exits. Bounded: past ``max_keys``, the keys without
    pending calls are forgotten (``prune``)."""

    def __init__(self, tgid_of: Callable[[int], int], max_keys: int = 1 << 16) -> None:
        self.tgid_of = tgid_of
        self.max_keys = max_keys
        self.ids: dict[tuple[int, int], int] = {}
        self.owner: dict[int, int] = {}  # key → process id (0: unknown)
        self.next = GO_KEY_BASE

    def key(self, tid: int, g: int) -> int:
        """The key of goroutine ``g`` of the process of thread ``tid``; the thread itself when no g (0)."""
        if not g:
            return tid
        pid = self.tgid_of(tid)
        key = self.ids.get((pid, g))
        if key is None:
            key = self.ids[pid, g] = self.next
            self.owner[key] = pid
            self.next += 1
        return key

    def prune(self, pending: set[int]) -> None:
        """Past ``max_keys``, forget the keys that have no pending call."""
        if len(self.ids) <= self.max_keys:
            return
        for ident, key in list(self.ids.items()):
            if key not in pending:
                del self.ids[ident]
                self.owner.pop(key, None)


class Frame(NamedTuple):
    """A pending entry (a NamedTuple: one is built per call, and tuples are the cheapest to build)."""

    sp: int
    ts_ns: int
    extra: Any  # what the caller wants back at the return (e.g. label values of the entry)


class PythonPairing:
    """Pending entries per (probe, tid); ``enter``/``leave`` are called in timestamp order. The reference
    implementation: ``_native.Pairing`` (native/pairing.c) does exactly this, and the tests run both on the same
    calls."""

    def __init__(self, max_pending: int = 65536, max_depth: int = 4096) -> None:
        self.max_pending = max_pending
        self.max_depth = max_depth
        self.stacks: OrderedDict[tuple[str, int], list[Frame]] = OrderedDict()  # least recently active first
        self.pending = 0
        self.paired: dict[str, int] = {}  # a plain dict: a Counter's += costs three times as much
        self.returns_without_entry: Counter[str] = Counter()
        self.evicted: Counter[tuple[str, str]] = Counter()
        self.entry_filtered: set[str] = set()  # probes whose entries a kernel filter removes
        self.returns_filtered: Counter[str] = Counter()

    def set_entry_filtered(self, probes: Iterable[str]) -> None:
        """These probes' entry events have a kernel filter: count their unpaired returns as filtered."""
        self.entry_filtered.update(probes)

    def _unpaired(self, probe: str) -> None:
        if probe in self.entry_filtered:
            self.returns_filtered[probe] += 1
        else:
            self.returns_without_entry[probe] += 1

    def enter(self, probe: str, tid: int, sp: int, ts_ns: int, extra: Any = None) -> None:
        key = (probe, tid)
        stack = self.stacks.get(key)
        if stack is None:
            if len(self.stacks) >= self.max_pending:
                self.drop_empty()
            stack = self.stacks[key] = []
        else:
            self.stacks.move_to_end(key)
        if sp:
            while stack and stack[-1][0] <= sp:  # that frame's stack space is being reused
                stack.pop()
                self.pending -= 1
                self.evicted[probe, UNWOUND] += 1
        if len(stack) >= self.max_depth:
            del stack[0]
            self.pending -= 1
            self.evicted[probe, CAPACITY] += 1
        stack.append(_new_frame(Frame, (sp, ts_ns, extra)))
        self.pending += 1
        if self.pending > self.max_pending:
            self._evict_oldest()

    def leave(self, probe: str, tid: int, sp: int) -> Frame | None:
        """The entry this return closes, or None (counted) when it was not seen."""
        key = (probe, tid)
        stack = self.stacks.get(key)
        if not stack:
            self._unpaired(probe)
            return None
        if sp:
            target = sp - RETURN_ADDRESS_SIZE
            while stack and stack[-1][0] < target:
                stack.pop()
                self.pending -= 1
                self.evicted[probe, UNWOUND] += 1
            if not stack or stack[-1][0] != target:
                self._unpaired(probe)
                return None
        frame = stack.pop()
        self.pending -= 1
        try:
            self.paired[probe] += 1
        except KeyError:
            self.paired[probe] = 1
        return frame

    def leave_matching(self, probe: str, tid: int, want: tuple[Any, ...]) -> Frame | None:
        """``leave`` without a stack pointer (the innermost entry), but only if each non-None item of
        ``want`` equals the same item of that entry's ``extra`` (its label values); otherwise the return
        is counted as without entry and the entry stays open. A USDT return whose function is not the
        innermost entry's (CPython 3.11 fires function__return for every frame, function__entry only
        for frames entered from C) then does not close it."""
        stack = self.stacks.get((probe, tid))
        if stack:
            extra = stack[-1][2]
            for j, w in enumerate(want):
                if w is None:
                    continue
                if not isinstance(extra, tuple) or j >= len(extra):  # as the native twin says it
                    raise ValueError("leave_matching: the entry's extra has no such item")
                if extra[j] != w:
                    break
            else:
                return self.leave(probe, tid, 0)
        self._unpaired(probe)
        return None

    def _evict_oldest(self) -> None:
        """The least recently active thread with a pending entry loses its oldest one."""
        for key, stack in self.stacks.items():
            if stack:
                del stack[0]
                self.pending -= 1
                self.evicted[key[0], CAPACITY] += 1
                return

    def drop_empty(self) -> None:
        """Forget the empty stacks (threads between calls, or gone)."""
        for key in [k for k, stack in self.stacks.items() if not stack]:
            del self.stacks[key]

    def threads(self) -> set[int]:
        """Thread ids with pending entries (to check which of them have exited)."""
        return {tid for (_, tid), stack in list(self.stacks.items()) if stack}

    def evict_thread(self, tid: int) -> int:
        """Forget a thread that exited; its pending entries will never return."""
        n = 0
        for key in [k for k in self.stacks if k[1] == tid]:
            frames = len(self.stacks.pop(key))
            self.evicted[key[0], THREAD_EXIT] += frames
            n += frames
        self.pending -= n
        return n

    def counts(self) -> Counts:
        """Per probe: pending entries, paired calls, returns without entry; evictions per (probe, reason);
        filtered returns. Safe to call from another thread (the copies are single C-level operations)."""
        pending: Counter[str] = Counter()
        for (probe, _), stack in list(self.stacks.items()):
            pending[probe] += len(stack)
        return (dict(pending), dict(self.paired), dict(self.returns_without_entry), dict(self.evicted),
                dict(self.returns_filtered))


Counts = tuple[dict[str, int], dict[str, int], dict[str, int], dict[tuple[str, str], int], dict[str, int]]


class PairingCore(Protocol):
    """What both twins implement: ``PythonPairing`` (the reference) and ``_native.Pairing`` (pairing.c);
    backend.py chooses one."""

    @property
    def stacks(self) -> dict[tuple[str, int], list[Frame]]: ...
    @property
    def pending(self) -> int: ...
    def enter(self, probe: str, tid: int, sp: int, ts_ns: int, extra: Any = None) -> None: ...
    def leave(self, probe: str, tid: int, sp: int) -> Frame | None: ...
    def leave_matching(self, probe: str, tid: int, want: tuple[Any, ...]) -> Frame | None: ...
    def drop_empty(self) -> None: ...
    def threads(self) -> set[int]: ...
    def evict_thread(self, tid: int) -> int: ...
    def set_entry_filtered(self, probes: Iterable[str]) -> None: ...
    def counts(self) -> Counts: ...


class Pairing:
    """The pairing a pipeline uses, over the backend's twin (``twin``: ``PythonPairing`` or the native
    one, backend.py). Its methods are the twin's own, bound once: a call costs no extra layer."""

    def __init__(self, max_pending: int = 65536, max_depth: int = 4096,
                 twin: Callable[[int, int], PairingCore] = PythonPairing) -> None:
        core = twin(max_pending, max_depth)
        self.core = core
        self.enter: Callable[..., None] = core.enter  # (probe, tid, sp, ts_ns, extra=None)
        self.leave: Callable[[str, int, int], Frame | None] = core.leave
        self.leave_matching: Callable[[str, int, tuple[Any, ...]], Frame | None] = core.leave_matching
        self.drop_empty: Callable[[], None] = core.drop_empty
        self.threads: Callable[[], set[int]] = core.threads
        self.evict_thread: Callable[[int], int] = core.evict_thread
        self.set_entry_filtered: Callable[[Iterable[str]], None] = core.set_entry_filtered

    @property
    def stacks(self) -> dict[tuple[str, int], list[Frame]]:
        """The pending entries per (probe, tid), least recently active first (a copy when native)."""
        return self.core.stacks

    @property
    def pending(self) -> int:
        return int(self.core.pending)
    def statistics(self) -> PairingStats:
        """A snapshot; safe to call from another thread."""
        pending, paired, without, evicted, filtered = self.core.counts()
        return PairingStats(sum(pending.values()), sum(paired.values()), sum(without.values()),
                            sum(evicted.values()), pending, paired, without, evicted, sum(filtered.values()), filtered)
