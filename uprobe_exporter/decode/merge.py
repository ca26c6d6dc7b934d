"""Pure: the cross-CPU merge of located records into one timestamp order (``CpuMerge``, the reference;
its native twin ``_native.Merge``, chosen in backend.py).

A thread can migrate between its entry and its return, so the CPUs' records are merged by timestamp
before pairing. The raw reader (run/rawreader.py) says up to when a batch may be released; the records
younger than that are held back for the next batch.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Protocol

from uprobe_exporter.decode.rawpage import Located

HOLD_NS = 2_000_000  # records younger than this are held back for the next batch
MAX_HELD = 1 << 16  # but at most this many of them
_ts_of = itemgetter(0)  # Located: (ts_ns, handler, page, offset, cpu)


class Merge(Protocol):
    """What the raw reader asks of a merge: a run per CPU and batch for the page walk to fill, its last
    timestamp, and ``push`` (the runs merged with what was held, in order, up to ``now_ns - hold_ns``)."""

    @property
    def hold_ns(self) -> int: ...
    @property
    def waiting(self) -> int: ...  # records held back for the next batch
    def new_run(self) -> Any: ...
    def last_ts(self, run: Any) -> int | None: ...
    def push(self, runs: list[Any], now_ns: int, final: bool = False) -> Sequence[Located]: ...


class CpuMerge:
    """Merges per-CPU runs of located records (each in timestamp order) into one order, holding back the
    records younger than ``hold_ns`` (at most ``max_held`` of them) for the next batch."""

    def __init__(self, hold_ns: int = HOLD_NS, max_held: int = MAX_HELD) -> None:
        self.hold_ns = hold_ns
        self.max_held = max_held
        self.held: list[Located] = []

    @property
    def waiting(self) -> int:
        return len(self.held)

    def new_run(self) -> list[Located]:
        """Where the decoder puts one CPU's records of this batch (a run passed to ``push``)."""
        return []

    def last_ts(self, run: list[Located]) -> int | None:
        """The timestamp of the last record in ``run``, or None."""
        return run[-1][0] if run else None

    def push(self, runs: list[list[Located]], now_ns: int, final: bool = False) -> Sequence[Located]:
        # sorted() is stable and merges already-ordered runs in linear time (timsort), in C
        merged = sorted([r for run in (*runs, self.held) for r in run], key=_ts_of)
        if final:
            self.held = []
            return merged
        cut = bisect_right(merged, now_ns - self.hold_ns, key=_ts_of)
        cut = max(cut, len(merged) - self.max_held)
        self.held = merged[cut:]
        return merged[:cut] if cut < len(merged) else merged

