"""rawemit: the native emitters give exactly what the record path gives (``RecordBuilder`` →
``Pipeline.process_items`` → ``Renderer``), which is also the raw handler of every event without the
extension (the "python" cases run it through ``process_located``): the same JSON bytes, counts, pairs,
evictions, histograms and error counts, on the pages captured from this kernel and on synthetic and
corrupted pages, for every kind of histogram labels and with JSON output off. The native clock and
context are checked against their Python twins. (Go, RET-site and USDT events: test_emit_kinds.)"""

from __future__ import annotations

import dataclasses
import gc
import struct
import sys
import weakref
from operator import itemgetter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_pipeline import KERNEL, config, pipeline
from tests.unit.test_rawpage import PAGE, Page, layout, pages
from tests.unit.test_traceline import formats
from tests.unit.twins import backend, native
from uprobe_exporter.backend import PYTHON, Backend
from uprobe_exporter.decode.rawpage import Handler, Located, RawDecoder
from uprobe_exporter.decode.records import LostEvents, TraceRecord
from uprobe_exporter.kernel.formatfile import EventFormat
from uprobe_exporter.pipeline.lines import LineList
from uprobe_exporter.pipeline.pairing import Pairing
from uprobe_exporter.pipeline.raw import RawPipeline
from uprobe_exporter.pipeline.rawemit import Sinks, context
from uprobe_exporter.pipeline.render import PyClock, Renderer
from uprobe_exporter.plan.config import Config
from uprobe_exporter.processes.podlogs import PodIdentity

# the histogram labels of the "work" probe: none, comm only, an entry argument, a return argument
LABELS = {"none": [], "comm": ["comm"], "entry_arg": ["comm", "s"], "return_arg": ["ret", "comm"],
          "pod": ["k8s_pod_name", "comm", "k8s_namespace_name"]}


def identity_of(pid: int) -> PodIdentity | None:
    """Pods of made-up processes: every other one in a pod (a container name, or none), the rest in none."""
    if pid % 2:
        return None
    return PodIdentity(f"ns{pid % 3}", f"pod-{pid % 5}", "c" if pid % 4 else "", f"{pid:064x}")


def labelled(labels: list[str], buckets: tuple[float, ...] | None = None) -> Config:
    cfg = config()
    work = dataclasses.replace(cfg.probes[0], labels=tuple(labels), buckets=buckets or cfg.probes[0].buckets)
    return dataclasses.replace(cfg, probes=(work, *cfg.probes[1:]))


def raw_pipeline(renderer: Renderer | None, twins: Backend) -> RawPipeline:
    """The raw pipeline of test_pipeline's configuration, on ``twins``."""
    base = pipeline(renderer)
    return RawPipeline(base.infos, base.probes.values(), renderer, Pairing(twin=twins.pairing), twins)


def both(labels: list[str], render: bool, native: bool,
         buckets: tuple[float, ...] | None = None) -> tuple[RawPipeline, RawPipeline]:
    """Two identical pipelines: one for records, one for emitters (native ones or Python ones)."""
    made = []
    for twins in (PYTHON, backend(native)):  # the record path: all Python
        base = pipeline(Renderer(10**18, identity_of=identity_of) if render else None)
        cfg = labelled(labels, buckets)
        infos = {name: dataclasses.replace(info, labels=tuple(labels)) if info.probe == "work" else info
                 for name, info in base.infos.items()}  # the labels each event's route is made for
        made.append(RawPipeline(infos, cfg.probes, base.renderer, Pairing(max_pending=64, twin=twins.pairing), twins,
                                3, lambda tid: tid // 2, identity_of=identity_of))
    return made[0], made[1]


def state(p: RawPipeline) -> Any:
    hists = {name: {k: (list(h.counts), h.sum_ns) for k, h in ph.series.items()} for name, ph in p.histograms.items()}
    return p.statistics(), p.pairing.statistics(), hists, dict(p.decode_errors)


def count_fallbacks(p: RawPipeline) -> list[int]:
    """Count the records ``p``'s handlers hand to the record path (the native emitter's fallback, for
    anomalies only): the differential tests must not be comparing the record path with itself."""
    made, calls = p.record_handler, [0]

    def counted(fmt: EventFormat) -> Handler:
        handle = made(fmt)

        def fallback(page: bytes, offset: int, ts_ns: int, cpu: int) -> None:
            calls[0] += 1
            handle(page, offset, ts_ns, cpu)
        return fallback

    p.record_handler = counted  # type: ignore[method-assign]
    return calls


def run_both(labels: list[str], render: bool, batches: list[list[tuple[bytes, int]]], native: bool,
             buckets: tuple[float, ...] | None = None, clean: bool = False) -> tuple[bytes, RawPipeline]:
    """Each batch: (page, cpu)s, merged by timestamp as the reader does, through both paths (the emitters:
    native where built and covering the event, or all Python); returns the JSON and the record path.
    ``clean``: pages without anomalies, which the native emitters must emit without their fallback."""
    by_record, by_emitter = both(labels, render, native, buckets)
    records = RawDecoder(layout(), RawDecoder.for_formats(layout(), formats()).handlers, by_record.decode_errors)
    fallbacks = count_fallbacks(by_emitter)
    emitters = by_emitter.emitters(formats())
    assert by_emitter.backend.native_emitters(emitters) == (len(emitters) if native else 0)
    located_decoder = RawDecoder(layout(), emitters, by_emitter.decode_errors, by_emitter.backend.walk)
    merge = by_emitter.backend.new_merge()  # the native one releases what _native.run emits in C
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
    if clean and native:
        assert fallbacks == [0], "the native emitters handed clean records to the record path"
    elif clean:
        assert fallbacks[0] > 0, "the Python backend's handlers are the record path"
    return out_records, by_record


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
    assert native().emit_plan is not None


@NATIVE
@pytest.mark.parametrize("render", [True, False], ids=["json", "no_json"])
@pytest.mark.parametrize("labels", list(LABELS.values()), ids=list(LABELS))
def test_captured_pages_give_the_same_output_both_ways(labels: list[str], render: bool, native: bool) -> None:
    out, by_record = run_both(labels, render, captured(), native, clean=True)
    if labels == LABELS["pod"]:  # the pods were there to see: in the JSON and in the histogram labels
        assert not render or (b'"namespace":"ns' in out and b'"container_id":"' in out)
        series = by_record.histograms["work"].series
        assert {k[0] for k in series} > {""} and {k[2] for k in series} > {""}


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
    p = raw_pipeline(Renderer(0), PYTHON)
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
    run_both(labels, True, captured(), native, buckets, clean=True)


@pytest.mark.parametrize("native_run", [True, False], ids=["native_run", "python_loop"])
def test_what_the_native_merge_released_runs_in_either_loop(native_run: bool) -> None:
    """A ``_native.Released`` batch gives the same output through ``_native.run`` as through the Python
    loop, which iterates it as Located tuples."""
    outputs = []
    for use_native in (True, False):
        twins = backend(use_native)
        if not native_run:  # the native walk and merge, the Python loop
            twins = dataclasses.replace(twins, run=PYTHON.run)
        p = raw_pipeline(Renderer(10**18), twins)
        decoder = RawDecoder(layout(), p.emitters(formats()), p.decode_errors, twins.walk)
        merge = twins.new_merge()
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
    lines = backend(native).lines()
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
    record path raises."""
    p = raw_pipeline(Renderer(0), native())
    plan = p.backend.emit_plan
    assert plan is not None
    emitter = next(e for e in p.emitters(formats()).values() if isinstance(e, plan))
    for offset in (sys.maxsize - 4, PAGE, -1):
        with pytest.raises(struct.error):
            emitter(b"\0" * PAGE, offset, 1, 0)


def decoded_and_located(p: RawPipeline) -> tuple[list[TraceRecord], list[Located]]:
    """The captured records, both as TraceRecords and located for ``p``'s emitters, in the same order."""
    records: list[TraceRecord | LostEvents] = []
    located: list[Located] = []
    decoder = RawDecoder.for_formats(layout(), formats())
    locator = RawDecoder(layout(), p.emitters(formats()), p.decode_errors, p.backend.walk)
    for batch in captured():
        for page, cpu in batch:
            decoder.decode(page, cpu, records)
            locator.locate(page, cpu, located, [])
    recs = sorted((r for r in records if isinstance(r, TraceRecord)), key=itemgetter(4))
    located.sort(key=itemgetter(0))
    assert len(recs) == len(located) and all(r.ts_ns == x[0] for r, x in zip(recs, located, strict=True))
    return recs, located


@NATIVE
@pytest.mark.parametrize("labels", [LABELS["none"], LABELS["comm"], LABELS["return_arg"]], ids=["none", "comm", "ret"])
def test_a_negative_duration_is_counted_never_observed_both_ways(labels: list[str], native: bool) -> None:
    """Records handed over out of timestamp order (every fourth one 100 ms earlier than it was): a
    return that pairs with a younger entry is emitted without a duration, counted per probe, kept out of
    the histogram — by the emitters (native and Python) exactly as by the record path."""
    by_record, by_emitter = both(labels, True, native)
    recs, located = decoded_and_located(by_emitter)
    shift = [100_000_000 if i % 4 == 1 else 0 for i in range(len(recs))]
    a = by_record.process_items([r._replace(ts_ns=r.ts_ns - d) for r, d in zip(recs, shift, strict=True)])
    b = by_emitter.process_located([(x[0] - d, *x[1:]) for x, d in zip(located, shift, strict=True)], [])
    assert a is not None and b == a
    assert state(by_emitter) == state(by_record)
    negative = by_record.statistics().negative_durations
    assert set(negative) == {"work", "recurse"} and sum(negative.values()) > 10
    lines = [orjson.loads(x) for x in a[0].splitlines()]
    assert len(lines) == len(recs), "every record is emitted"
    assert all(x["duration_ns"] >= 0 for x in lines if "duration_ns" in x)
    returns = [x for x in lines if x["type"] == "return"]
    paired = by_record.pairing.statistics().paired
    assert sum("duration_ns" not in x for x in returns) - (len(returns) - paired) == sum(negative.values())
    observed = sum(sum(h.counts) for ph in by_record.histograms.values() for h in ph.series.values())
    assert observed == paired - sum(negative.values())


def filtered_pipelines(native: bool, render: bool) -> tuple[RawPipeline, RawPipeline]:
    """Both paths for a configuration in which "recurse" has an entry filter (and "work" has none)."""
    made = []
    for twins in (PYTHON, backend(native)):
        base = pipeline(Renderer(10**18) if render else None)
        cfg = config()
        probes = tuple(dataclasses.replace(p, filter="n > 2") if p.name == "recurse" else p for p in cfg.probes)
        made.append(RawPipeline(base.infos, probes, base.renderer, Pairing(max_pending=64, twin=twins.pairing), twins,
                                3, lambda tid: tid // 2))
    return made[0], made[1]


@NATIVE
@pytest.mark.parametrize("render", [True, False], ids=["json", "no_json"])
def test_returns_whose_entry_was_filtered_are_not_emitted_both_ways(native: bool, render: bool) -> None:
    """The kernel filter of "recurse" removed every other entry (and of "work": none, it has no filter):
    returns of "recurse" without their entry are neither emitted nor counted as records, but as
    filtered returns, not as returns without entry; the entries kept pair with their own returns. The
    emitters (native and Python) do exactly what the record path does."""
    by_record, by_emitter = filtered_pipelines(native, render)
    recs, located = decoded_and_located(by_emitter)
    removed = {i for i, r in enumerate(recs) if r.event == "recurse_entry" and r.args["n"] % 2}
    without_work_entries = {i for i, r in enumerate(recs) if r.event == "work_entry" and r.args["a"] % 2}
    drop = removed | without_work_entries  # "work" has no filter: its returns without entry stay
    a = by_record.process_items([r for i, r in enumerate(recs) if i not in drop])
    b = by_emitter.process_located([x for i, x in enumerate(located) if i not in drop], [])
    assert a == b and state(by_emitter) == state(by_record)
    pairs = by_record.pairing.statistics()
    assert pairs.returns_filtered_by_probe == {"recurse": len(removed)} and len(removed) > 3
    assert pairs.returns_without_entry_by_probe == {"work": len(without_work_entries)} and without_work_entries
    events = by_record.statistics().events
    entries, returns = (sum(r.event == f"recurse_{t}" for r in recs) for t in ("entry", "return"))
    assert events["recurse", "entry"] == entries - len(removed)
    assert events["recurse", "return"] == returns - len(removed) == pairs.paired_by_probe["recurse"]
    if render:
        assert a is not None
        lines = [orjson.loads(x) for x in a[0].splitlines()]
        assert len(lines) == sum(events.values())
        assert all("duration_ns" in x for x in lines if x["probe"] == "recurse" and x["type"] == "return")


@pytest.mark.parametrize("offset", [0, 10**18, -(10**18)])
def test_the_native_clock_is_its_python_twin(offset: int) -> None:
    """``_native.Clock.second`` gives the bytes ``PyClock.second`` gives and caches the same second, for
    walls around second boundaries, before 1970 and past 63 bits (not cached natively: no C integer)."""
    clock = native().clock
    assert clock is not PyClock
    made, python = clock(offset), PyClock(offset)
    assert made.wall_offset_ns == python.wall_offset_ns == offset
    walls = [0, 1, 999_999_999, 1_000_000_000, 1_795_630_265_123_456_789, -1, -1_000_000_001, (1 << 63) - 1,
             1 << 63, (1 << 64) + 12_345_678_901, 1_795_630_265_999_999_999, 1_795_630_266_000_000_000]
    for wall in walls:
        assert made.second(wall) == python.second(wall), wall
        if wall < 1 << 63:
            assert (made.sec_ns, made.sec_text) == (python.sec_ns, python.sec_text)
    made.pid_generation += 1
    assert made.pid_generation == 1
    with pytest.raises(TypeError):
        made.sec_text = "text"  # type: ignore[assignment]


def sinks(p: RawPipeline, **changes: Any) -> Sinks:
    r = p.renderer
    assert r is not None
    made = Sinks(pairing=p.pairing.core, counts=p.event_counts, negative=p.negative_durations, lines=p.lines,
                 clock=r.clock, by_thread=r.by_thread, thread_middle=r.thread_middle, tgid_of=p.tgid_of,
                 comms=p.comms, new_comm=p.comms.new, dumps=orjson.dumps, pod_label=p.pod_label, go_key=p.go_keys.key)
    return dataclasses.replace(made, **changes)


def test_the_emit_context_takes_named_slots_only() -> None:
    """``_native.EmitContext`` has ``Sinks``' slots, by name; a Python pairing, a slot missing or given by
    position, a Python clock: refused."""
    twins = native()
    assert twins.emit_context is not None
    p = raw_pipeline(Renderer(0), twins)
    good = sinks(p)
    ctx = context(twins.emit_context, good)
    assert ctx.counts is p.event_counts and ctx.pairing is p.pairing.core
    fields = {f.name: getattr(good, f.name) for f in dataclasses.fields(good)}
    new: Any = twins.emit_context
    with pytest.raises(TypeError):
        new(*fields.values())
    with pytest.raises(TypeError):
        new(**{k: v for k, v in fields.items() if k != "go_key"})
    with pytest.raises(TypeError):
        new(**{**fields, "pairing": Pairing(twin=PYTHON.pairing).core})
    with pytest.raises(TypeError):
        new(**{**fields, "clock": PyClock(0)})


def test_an_emitter_in_a_reference_cycle_is_collected() -> None:
    """EmitPlan and EmitContext take part in garbage collection (traverse and clear): a cycle through a
    callable in the context and the plan is freed."""
    twins = native()
    assert twins.emit_context is not None and twins.emit_plan is not None
    p = raw_pipeline(Renderer(0), twins)

    class Holder:
        plans: Any = None

        def pod_label(self, tid: int, label: str) -> str:
            return ""

    holder = Holder()
    p.context = context(twins.emit_context, sinks(p, pod_label=holder.pod_label))
    holder.plans = p.emitters(formats())
    assert any(isinstance(e, twins.emit_plan) for e in holder.plans.values())
    ref = weakref.ref(holder)
    del holder, p
    gc.collect()
    assert ref() is None
