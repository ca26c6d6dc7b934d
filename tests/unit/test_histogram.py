"""histogram: Prometheus ``le`` bucket placement in integer nanoseconds, sums, and the label-value cap; the
native series (``_native.Histogram``) is the Python one: the same buckets and sums on the same observations,
directly, through ProbeHistograms, and through the native emitters' C fast path."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.twins import native
from uprobe_exporter.pipeline.histogram import (
    OTHER,
    Histogram,
    HistogramSeries,
    LabelFolder,
    ProbeHistograms,
    SeriesFactory,
)
from uprobe_exporter.plan.config import DEFAULT_BUCKETS


def exact_ns(seconds: float) -> int:
    """The bound in nanoseconds as the decimal number written in the configuration."""
    ns = Decimal(repr(seconds)) * 10**9
    assert ns == ns.to_integral_value()
    return int(ns)


NATIVE_SERIES = native().histogram  # _native.Histogram: CI builds the extension
TWINS: list[SeriesFactory] = [Histogram, NATIVE_SERIES]  # mypy: both are HistogramSeries
SERIES = pytest.mark.parametrize("series", TWINS, ids=["python", "native"])


def only(h: ProbeHistograms) -> HistogramSeries:
    (hist,) = h.series.values()
    return hist


def new(buckets: tuple[float, ...] = DEFAULT_BUCKETS, labels: tuple[str, ...] = (), cap: int = 100,
        series: SeriesFactory = NATIVE_SERIES) -> ProbeHistograms:
    return ProbeHistograms(buckets, labels, LabelFolder(cap), new_series=series)


@pytest.mark.parametrize("index", range(len(DEFAULT_BUCKETS)))
@SERIES
def test_a_value_equal_to_a_bound_is_in_that_bucket(index: int, series: SeriesFactory) -> None:
    h = new(series=series)
    bound = exact_ns(DEFAULT_BUCKETS[index])
    h.observe((), bound)
    h.observe((), bound + 1)
    h.observe((), bound - 1)
    counts = only(h).counts
    assert counts[index] == 2  # bound - 1 and bound itself: le
    assert counts[index + 1] == 1
    assert sum(counts) == 3


@SERIES
def test_buckets_le_semantics_and_inf(series: SeriesFactory) -> None:
    h = new((0.001, 0.01), series=series)
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


@SERIES
def test_label_values_past_the_cap_fold_into_other(series: SeriesFactory) -> None:
    h = new((1.0,), labels=("comm",), cap=2, series=series)
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


@SERIES
def test_a_histogram_without_labels_has_its_series_from_the_start(series: SeriesFactory) -> None:
    h = new(series=series)
    assert only(h).counts == [0] * (len(DEFAULT_BUCKETS) + 1) and only(h).sum_ns == 0
    h.observe((), 5)
    assert sum(only(h).counts) == 1, "observations go into that series"
    assert new(labels=("comm",), series=series).series == {}, "label values are not known before the first call"


def test_the_native_series_is_built_and_what_probe_histograms_make() -> None:
    """CI builds the extension: the native backend's series are native ones, which the emitters observe
    into in C; a ProbeHistograms made without a backend has the Python reference."""
    assert NATIVE_SERIES.__module__ == "uprobe_exporter._native"
    assert type(only(new())) is NATIVE_SERIES
    assert type(only(ProbeHistograms(DEFAULT_BUCKETS, (), LabelFolder(100)))) is Histogram


def state(h: HistogramSeries) -> tuple[list[int], int, list[int]]:
    return list(h.counts), h.sum_ns, list(h.bounds_ns)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=12),
       st.lists(st.one_of(st.integers(-(1 << 64) + 1, (1 << 64) - 1), st.integers(-10, 10**10)), max_size=80))
def test_the_native_series_is_the_python_series(bounds: list[int], durations: list[int]) -> None:
    """The same bounds (sorted, repeated, at the 64-bit edges) and durations (negative, past 2**63, at a
    bound): the same counts, sum and text after every observation."""
    bounds.sort()
    ours, twin = Histogram(bounds), NATIVE_SERIES(bounds)
    assert state(ours) == state(twin)
    for d in durations:
        ours.observe(d)
        twin.observe(d)
        assert state(ours) == state(twin)
    assert repr(ours) == repr(twin)


def test_the_native_series_refuses_what_it_cannot_hold_exactly() -> None:
    h = NATIVE_SERIES([1, 2])
    for d in (1 << 64, -(1 << 64), 1 << 200):
        with pytest.raises(OverflowError):
            h.observe(d)
    with pytest.raises(TypeError):
        h.observe(1.5)  # type: ignore[arg-type]
    assert state(h) == ([0, 0, 0], 0, [1, 2]), "nothing is added by an observation refused"
    with pytest.raises(OverflowError):
        NATIVE_SERIES([1 << 63])
    with pytest.raises(TypeError):
        NATIVE_SERIES([1.0])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        type("Sub", (cast(type, NATIVE_SERIES),), {})


def test_bounds_past_64_bits_take_the_python_series() -> None:
    h = new((1.0, 1e10))  # 1e19 ns: past 2**63
    assert type(only(h)) is Histogram
    h.observe((), 1 << 63)
    assert only(h).counts == [0, 1, 0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 20 * 10**9)), max_size=60),
       st.integers(1, 3))
def test_probe_histograms_fold_and_fill_the_same_with_either_series(
        observations: list[tuple[str, int]], cap: int) -> None:
    made = [new(labels=("comm",), cap=cap, series=series) for series in TWINS]
    for comm, d in observations:
        for h in made:
            h.observe((comm,), d)
    python, native = ({k: state(v) for k, v in h.series.items()} for h in made)
    assert python == native and made[0].folder.folded == made[1].folder.folded
    assert all(type(v) is NATIVE_SERIES for v in made[1].series.values())


@pytest.mark.parametrize("labels", [[], ["comm"], ["comm", "s"], ["ret", "comm"]], ids=["none", "comm", "arg", "ret"])
def test_the_emitters_c_fast_path_is_the_python_series(labels: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The captured pages through the native emitters (which observe into native series in C, hist_observe)
    and through the record path with Python series: the same counts and sums (rawemit's run_both compares)."""
    from tests.unit import test_rawemit
    from uprobe_exporter.pipeline.raw import RawPipeline

    made: list[RawPipeline] = []

    def pipeline(*args: Any, **kw: Any) -> RawPipeline:
        p = RawPipeline(*args, **kw)  # the record path on the Python backend: Python series
        made.append(p)
        return p

    monkeypatch.setattr(test_rawemit, "RawPipeline", pipeline)
    test_rawemit.run_both(labels, False, test_rawemit.captured(), True)
    python, native = (p.histograms["work"] for p in made)
    assert python.series and all(type(h) is Histogram for h in python.series.values())
    assert all(type(h) is NATIVE_SERIES for h in native.series.values())
    assert sum(sum(h.counts) for h in native.series.values()) >= 20  # the calls to work() in the capture
