"""Pure latency histograms with label sets under a cardinality cap; read by the metrics collector.

Observing is a bisect and two additions (no lock: the event loop is the only writer; a scrape on
another thread copies the lists, which the GIL makes atomic per list).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

OTHER = "__other__"  # the value a label takes once its cap of distinct values is reached
COMM_ONLY = ("comm",)  # the most common label set, taken without a call
NO_LABELS, COMM_LABEL, ANY_LABELS = "none", "comm", "any"  # what an entry takes for its histogram labels


def labels_kind(labels: tuple[str, ...], has_histogram: bool) -> str:
    """What an entry must keep for its return's histogram labels: nothing, its comm, or any values."""
    if not has_histogram or not labels:
        return NO_LABELS
    return COMM_LABEL if labels == COMM_ONLY else ANY_LABELS


@dataclass(slots=True)
class Histogram:
    """One series: counts per bucket (the last is +Inf), and the sum; ``bounds_ns`` is shared."""

    bounds_ns: list[int]
    counts: list[int]
    sum_ns: int = 0


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
    """The call-duration histograms of one probe, one per label-value tuple."""

    buckets: tuple[float, ...]
    labels: tuple[str, ...]
    folder: LabelFolder
    series: dict[tuple[str, ...], Histogram] = field(default_factory=dict)
    bounds_ns: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bounds_ns = [round(b * 1e9) for b in self.buckets]
        if not self.labels:  # the one series there will be exists from the start, at 0 (rate() needs it)
            self.series[()] = Histogram(self.bounds_ns, [0] * (len(self.buckets) + 1))

    def observe(self, values: tuple[str, ...], duration_ns: int) -> None:
        h = self.series.get(values)
        if h is None:
            values = self.folder.fold(values)
            h = self.series.get(values)
            if h is None:
                h = self.series[values] = Histogram(self.bounds_ns, [0] * (len(self.buckets) + 1))
        h.counts[bisect_left(h.bounds_ns, duration_ns)] += 1  # le: a value equal to a bound is in its bucket
        h.sum_ns += duration_ns
