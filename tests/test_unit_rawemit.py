"""rawemit: the generated emitters give exactly what the record path gives (``RecordBuilder`` →
``Pipeline.process_items`` → ``Renderer``): the same JSON bytes, counts, pairs, evictions, histograms and
error counts, on the pages captured from this kernel and on synthetic and corrupted pages, for every
kind of histogram labels and with JSON output off."""

from __future__ import annotations

import dataclasses
import struct
import sys
from operator import itemgetter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_unit_pipeline import KERNEL, config, pipeline
from tests.test_unit_rawpage import PAGE, Page, layout, pages
from tests.test_unit_traceline import formats
from uprobe_exporter.config import Config
from uprobe_exporter.pairing import Pairing
from uprobe_exporter.pipeline import Pipeline
from uprobe_exporter.rawemit import EmitPlan, LineList, new_lines
from uprobe_exporter.rawpage import RAW_ERROR_REASONS, Located, RawDecoder
from uprobe_exporter.rawreader import CpuMerge, NativeCpuMerge
from uprobe_exporter.records import LostEvents, TraceRecord
from uprobe_exporter.render import Renderer

# the histogram labels of the "work" probe: none, comm only, an entry argument, a return argument
LABELS = {"none": [], "comm": ["comm"], "entry_arg": ["comm", "s"], "return_arg": ["ret", "comm"]}


def labelled(labels: list[str], buckets: tuple[float, ...] | None = None) -> Config:
    cfg = config()
    work = dataclasses.replace(cfg.probes[0], labels=tuple(labels), buckets=buckets or cfg.probes[0].buckets)
    return dataclasses.replace(cfg, probes=(work, *cfg.probes[1:]))


def both(labels: list[str], render: bool, native: bool,
         buckets: tuple[float, ...] | None = None) -> tuple[Pipeline, Pipeline]:
    """Two identical pipelines: one for records, one for emitters (native ones or Python ones)."""
    made = []
    for use_native in (False, native):  # the record path: all Python
        base = pipeline(Renderer(10**18) if render else None)
        cfg = labelled(labels, buckets)
        infos = {name: dataclasses.replace(info, labels=tuple(labels)) if info.probe == "work" else info
                 for name, info in base.infos.items()}  # the labels each event's route is made for
        made.append(Pipeline(None, infos, cfg.probes, base.renderer, Pairing(max_pending=64, native=use_native), 3,
                             lambda tid: tid // 2, dict.fromkeys(RAW_ERROR_REASONS, 0), native=use_native))
    return made[0], made[1]


def state(p: Pipeline) -> Any:
    hists = {name: {k: (list(h.counts), h.sum_ns) for k, h in ph.series.items()} for name, ph in p.histograms.items()}
    return p.statistics(), p.pairing.statistics(), hists, dict(p.decode_errors)


def run_both(labels: list[str], render: bool, batches: list[list[tuple[bytes, int]]], native: bool,
             buckets: tuple[float, ...] | None = None) -> None:
    """Each batch: (page, cpu)s, merged by timestamp as the reader does, through both paths (the emitters:
    native where built and covering the event, or all Python)."""
    by_record, by_emitter = both(labels, render, native, buckets)
    records = RawDecoder(layout(), RawDecoder.for_formats(layout(), formats()).handlers, by_record.decode_errors)
    emitters = by_emitter.emitters(formats())
    assert EmitPlan is not None
    assert any(isinstance(e, EmitPlan) for e in emitters.values()) == native
    located_decoder = RawDecoder(layout(), emitters, by_emitter.decode_errors)
    merge = NativeCpuMerge() if native else CpuMerge()  # the native one releases what _native.run emits in C
    out_records, out_emitted = b"", b""
    for batch in batches:
        recs: list[TraceRecord | LostEvents] = []
        located = merge.new_run()
        lost: list[LostEvents] = []
        for page, cpu in batch:
            records.decode(page, cpu, recs)
            located_decoder.locate(page, cpu, located, lost)
        lost_first = [r for r in recs if isinstance(r, LostEvents)]
        ordered = sorted((r for r in recs if isinstance(r, TraceRecord)), key=itemgetter(4))
        a = by_record.process_items([*lost_first, *ordered])
        b = by_emitter.process_located(merge.push([located], 0, final=True), lost)
        assert (a is None) == (b is None) == (not render)
        if a is not None and b is not None:
            assert b[0] == a[0] and b[1] == a[1]
            out_records, out_emitted = out_records + a[0], out_emitted + b[0]
    assert state(by_emitter) == state(by_record)
    if render:
        assert out_emitted.count(b"\n") == sum(state(by_record)[0].events.values())


def captured() -> list[list[tuple[bytes, int]]]:
    """The captured pages of both CPUs, in batches of 3 pages per CPU."""
    per_cpu = []
    for path in sorted(KERNEL.glob("calls.raw.cpu*")):
        data, cpu = path.read_bytes(), int(path.name.removeprefix("calls.raw.cpu"))
        per_cpu.append([(data[i:i + PAGE], cpu) for i in range(0, len(data), PAGE)])
    size = max(len(x) for x in per_cpu)
    return [[pc for cpu in per_cpu for pc in cpu[i:i + 3]] for i in range(0, size, 3)]


NATIVE = pytest.mark.parametrize("native", [True, False], ids=["native", "python"])


def test_the_native_emitter_is_built() -> None:
    """CI installs with a C compiler: the native emitters are what runs, and what these tests compare."""
    assert EmitPlan is not None


@NATIVE
@pytest.mark.parametrize("render", [True, False], ids=["json", "no_json"])
@pytest.mark.parametrize("labels", list(LABELS.values()), ids=list(LABELS))
def test_captured_pages_give_the_same_output_both_ways(labels: list[str], render: bool, native: bool) -> None:
    run_both(labels, render, captured(), native)


@settings(max_examples=200, deadline=None)
@given(st.lists(pages(), min_size=1, max_size=4), st.sampled_from(list(LABELS.values())), st.booleans(), st.data())
def test_synthetic_and_corrupted_pages_give_the_same_output_both_ways(
        made: list[Page], labels: list[str], native: bool, data: st.DataObject) -> None:
    batch = []
    for cpu, (page, _, _) in enumerate(made):
        raw = bytearray(page)
        if data.draw(st.booleans()):  # corrupt it: records cut short, bad headers, unknown ids
            for _ in range(data.draw(st.integers(1, 10))):
                raw[data.draw(st.integers(16, PAGE - 1))] = data.draw(st.integers(0, 255))
        batch.append((bytes(raw), cpu))
    run_both(labels, True, [batch], native)


def test_a_record_shorter_than_its_format_is_counted() -> None:
    fmt = next(f for f in formats() if f.name == "recurse_entry")
    p = pipeline(Renderer(0))
    p.decode_errors = dict.fromkeys(RAW_ERROR_REASONS, 0)
    emitters = p.emitters(formats())
    located: list[Located] = [(1, emitters[fmt.id], struct.pack("=HBBi", fmt.id, 0, 0, 7), 0, 0)]
    assert p.process_located(located, [LostEvents(0, 5)]) == (b"", 0)
    assert p.decode_errors["record"] == 1 and p.lost_markers == 1 and p.lost_inband == 5


@NATIVE
@pytest.mark.parametrize("labels", [LABELS["none"], LABELS["comm"]], ids=["none", "comm"])
def test_a_duration_equal_to_a_bound_falls_in_that_bucket_both_ways(labels: list[str], native: bool) -> None:
    """Histogram bounds set to durations the captured calls took: each of those calls counts in the
    bucket whose bound it equals (le), by the emitters as by the record path."""
    _, p = both(labels, True, False)
    recs: list[TraceRecord | LostEvents] = []
    decoder = RawDecoder.for_formats(layout(), formats())
    for batch in captured():
        for page, cpu in batch:
            decoder.decode(page, cpu, recs)
    records = [r for r in recs if isinstance(r, TraceRecord)]
    records.sort(key=itemgetter(4))
    out = p.process_items([*records])
    assert out is not None
    durations = sorted({d for d in (orjson.loads(x).get("duration_ns") for x in out[0].splitlines()) if d})
    buckets = tuple(d / 1e9 for d in durations[::3] if round(d / 1e9 * 1e9) == d)
    assert len(buckets) >= 3
    run_both(labels, True, captured(), native, buckets)


@pytest.mark.parametrize("native_run", [True, False], ids=["native_run", "python_loop"])
def test_what_the_native_merge_released_runs_in_either_loop(native_run: bool) -> None:
    """A ``_native.Released`` batch gives the same output through ``_native.run`` as through the Python
    loop, which iterates it as Located tuples."""
    outputs = []
    for use_native in (True, False):
        p = pipeline(Renderer(10**18))
        p.decode_errors = dict.fromkeys(RAW_ERROR_REASONS, 0)
        p.native = native_run and use_native
        decoder = RawDecoder(layout(), p.emitters(formats()), p.decode_errors)
        merge = NativeCpuMerge() if use_native else CpuMerge()
        out: list[Any] = []
        for batch in captured():
            run = merge.new_run()
            lost: list[LostEvents] = []
            for page, cpu in batch:
                decoder.locate(page, cpu, run, lost)
            out.append(p.process_located(merge.push([run], 0, final=True), lost))
        outputs.append((out, state(p)))
    assert outputs[0] == outputs[1] and outputs[0][0][0][1] > 0


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_lines_are_taken_per_batch_in_order(native: bool) -> None:
    """``_native.Lines`` and its twin ``LineList``: lines in the order appended, taken joined with their
    count, empty after; a batch larger than the buffer kept (16 MiB) comes out whole too."""
    lines = new_lines(native)
    assert isinstance(lines, LineList) != native
    assert lines.take() == (b"", 0)
    for i in range(1000):
        lines.append(b'{"n":%d}\n' % i)
    assert len(lines) == 1000
    assert lines.take() == (b"".join(b'{"n":%d}\n' % i for i in range(1000)), 1000) and len(lines) == 0
    big = b"x" * (1 << 20) + b"\n"
    for _ in range(20):
        lines.append(big)
    assert lines.take() == (big * 20, 20)
    lines.append(b"after\n")
    assert lines.take() == (b"after\n", 1)


def test_an_offset_past_the_page_is_a_short_record_natively_too() -> None:
    """Offsets near the largest int do not wrap around in the native bounds check: struct.error, as the
    Python emitter raises."""
    p = pipeline(Renderer(0))
    p.decode_errors = dict.fromkeys(RAW_ERROR_REASONS, 0)
    assert EmitPlan is not None
    emitter = next(e for e in p.emitters(formats()).values() if isinstance(e, EmitPlan))
    for offset in (sys.maxsize - 4, PAGE, -1):
        with pytest.raises(struct.error):
            emitter(b"\0" * PAGE, offset, 1, 0)
