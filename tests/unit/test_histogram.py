"""histogram: Prometheus ``le`` bucket placement in integer nanoseconds, sums, and the label-value cap."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uprobe_exporter.pipeline.histogram import OTHER, Histogram, LabelFolder, ProbeHistograms
from uprobe_exporter.plan.config import DEFAULT_BUCKETS


def exact_ns(seconds: float) -> int:
    """The bound in nanoseconds as the decimal number written in the configuration."""
    ns = Decimal(repr(seconds)) * 10**9
    assert ns == ns.to_integral_value()
    return int(ns)


def only(h: ProbeHistograms) -> Histogram:
    (hist,) = h.series.values()
    return hist


def new(buckets: tuple[float, ...] = DEFAULT_BUCKETS, labels: tuple[str, ...] = (), cap: int = 100) -> ProbeHistograms:
    return ProbeHistograms(buckets, labels, LabelFolder(cap))


@pytest.mark.parametrize("index", range(len(DEFAULT_BUCKETS)))
def test_a_value_equal_to_a_bound_is_in_that_bucket(index: int) -> None:
    h = new()
    bound = exact_ns(DEFAULT_BUCKETS[index])
    h.observe((), bound)
    h.observe((), bound + 1)
    h.observe((), bound - 1)
    counts = only(h).counts
    assert counts[index] == 2  # bound - 1 and bound itself: le
    assert counts[index + 1] == 1
    assert sum(counts) == 3


def test_buckets_le_semantics_and_inf() -> None:
    h = new((0.001, 0.01))
    for ns in (0, 1, 1_000_000, 1_000_001, 10_000_000, 10_000_001, 10**12):
        h.observe((), ns)
    hist = only(h)
    assert hist.counts == [3, 2, 2]  # le 1 ms: 0, 1, 1 ms; le 10 ms: two; +Inf: two
    assert len(hist.counts) == len(hist.bounds_ns) + 1
    assert hist.sum_ns == sum((0, 1, 1_000_000, 1_000_001, 10_000_000, 10_000_001, 10**12))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10 * 10**9), max_size=50))
def test_cumulative_counts_match_a_direct_count(durations: list[int]) -> None:
    h = new(labels=("comm",))
    for d in durations:
        h.observe(("x",), d)
    if not durations:
        assert h.series == {}
        return
    hist = h.series["x",]
    cumulative = 0
    for bound, count in zip(DEFAULT_BUCKETS, hist.counts, strict=False):
        cumulative += count
        assert cumulative == sum(d <= exact_ns(bound) for d in durations)
    assert sum(hist.counts) == len(durations)
    assert hist.sum_ns == sum(durations)


def test_label_values_past_the_cap_fold_into_other() -> None:
    h = new((1.0,), labels=("comm",), cap=2)
    for comm in ("a", "b", "c", "d", "a", "c"):
        h.observe((comm,), 5)
    assert set(h.series) == {("a",), ("b",), (OTHER,)}
    assert sum(h.series["a",].counts) == 2
    assert sum(h.series[OTHER,].counts) == 3  # c, d, c
    assert h.folder.folded == 3


def test_each_label_has_its_own_cap() -> None:
    folder = LabelFolder(cap=1)
    assert folder.fold(("bash", "0")) == ("bash", "0")
    assert folder.fold(("bash", "1")) == ("bash", OTHER)
    assert folder.fold(("zsh", "0")) == (OTHER, "0")
    assert folder.fold(("zsh", "2")) == (OTHER, OTHER)
    assert folder.folded == 4


def test_a_histogram_without_labels_has_its_series_from_the_start() -> None:
    h = new()
    assert only(h).counts == [0] * (len(DEFAULT_BUCKETS) + 1) and only(h).sum_ns == 0
    h.observe((), 5)
    assert sum(only(h).counts) == 1, "observations go into that series"
    assert new(labels=("comm",)).series == {}, "label values are not known before the first call"
