"""Pure latency histograms with label sets under a cardinality cap; read by the metrics collector.

Each series is a ``HistogramSeries``: ``Histogram`` below is the reference (pure Python, the pure path's
series), ``_native.Histogram`` (native/histogram.c) its twin, which owns its counts and sum in C so that
the native emitters observe into it without touching Python objects. ProbeHistograms makes the native one
where the extension is built. Observing is a bisect and two additions (no lock: the event loop is the only
writer; a scrape on another thread reads ``counts`` and ``sum_ns``, which the GIL makes atomic each).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

OTHER = "__other__"  # the value a label takes once its cap of distinct values is reached
COMM_ONLY = ("comm",)  # the most common label set, taken without a call
NO_LABELS, COMM_LABEL, ANY_LABELS = "none", "comm", "any"  # what an entry takes for its histogram labels


def labels_kind(labels: tuple[str, ...], has_histogram: bool) -> str:
    """What an entry must keep for its return's histogram labels: nothing, its comm, or any values."""
    if not has_histogram or not labels:
        return NO_LABELS
    return COMM_LABEL if labels == COMM_ONLY else ANY_LABELS


class HistogramSeries(Protocol):
    """One series of a probe's histograms: what both twins implement, and all the collector reads."""

    @property
    def bounds_ns(self) -> Sequence[int]: ...  # the buckets' upper bounds (the +Inf bucket has none)

    @property
    def counts(self) -> Sequence[int]: ...  # per bucket, the last is +Inf (the native one: a copy)

    @property
    def sum_ns(self) -> int: ...

    def observe(self, duration_ns: int, /) -> None: ...


class Histogram:
    """One series in Python (the reference; ``_native.Histogram`` is its twin): counts per bucket (the last
    is +Inf), and the sum; ``bounds_ns`` is shared between the series of a probe."""

    __slots__ = ("bounds_ns", "counts", "sum_ns")

    def __init__(self, bounds_ns: list[int]) -> None:
        self.bounds_ns = bounds_ns
        self.counts = [0] * (len(bounds_ns) + 1)
        self.sum_ns = 0

    def observe(self, duration_ns: int, /) -> None:
        self.counts[bisect_left(self.bounds_ns, duration_ns)] += 1  # le: a value equal to a bound is in its bucket
        self.sum_ns += duration_ns

    def __repr__(self) -> str:
        return f"Histogram(counts={self.counts!r}, sum_ns={self.sum_ns!r})"


SeriesFactory = Callable[[list[int]], HistogramSeries]  # a series type, given the bounds in nanoseconds
INT64_MAX = (1 << 63) - 1  # the native series keeps bounds as C integers



@dataclass(slots=True)
class LabelFolder:
    """Caps the distinct values of each label; values past the cap become ``__other__`` (counted)."""

    cap: int
    seen: list[set[str]] = field(default_factory=list)
    folded: int = 0

    def fold(self, values: tuple[str, ...]) -> tuple[str, ...]:
        if not self.seen:
            self.seen = [set() for _ in values]
        out = []
        for value, seen in zip(values, self.seen, strict=True):
            if value not in seen:
                if len(seen) >= self.cap:
                    self.folded += 1
                    value = OTHER
                else:
                    seen.add(value)
            out.append(value)
        return tuple(out)


@dataclass(slots=True)
class ProbeHistograms:
    """The call-duration histograms of one probe, one per label-value tuple. ``new_series`` makes a series
    (the backend's: backend.py; the Python one for bounds past 64 bits, which only a configuration of
    buckets longer than 292 years has)."""

    buckets: tuple[float, ...]
    labels: tuple[str, ...]
    folder: LabelFolder
    series: dict[tuple[str, ...], HistogramSeries] = field(default_factory=dict)
    bounds_ns: list[int] = field(default_factory=list)
    new_series: SeriesFactory = Histogram

    def __post_init__(self) -> None:
        self.bounds_ns = [round(b * 1e9) for b in self.buckets]
        if any(b > INT64_MAX or b < -INT64_MAX for b in self.bounds_ns):
            self.new_series = Histogram
        if not self.labels:  # the one series there will be exists from the start, at 0 (rate() needs it)
            self.series[()] = self.new_series(self.bounds_ns)

    def observe(self, values: tuple[str, ...], duration_ns: int) -> None:
        h = self.series.get(values)
        if h is None:
            values = self.folder.fold(values)
            h = self.series.get(values)
            if h is None:
                h = self.series[values] = self.new_series(self.bounds_ns)
        h.observe(duration_ns)
