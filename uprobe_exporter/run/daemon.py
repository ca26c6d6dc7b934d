"""Wiring: config → resolve → register → one TaskGroup (reader, sink, housekeeping) → clean exit.

Shutdown (SIGINT, SIGTERM, an error, or the JSON reader going away): stop recording (our instance's
``tracing_on``), drain what the kernel still holds, flush the sink, then disable and remove our events
one by one, hottest first, and our instance. The reader never blocks; what the stop costs is the
kernel's per-event removal (an RCU grace period or two each, ≈60 ms on Linux 6.18), which
``exporter.stop_budget_seconds`` must cover (session.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

from uprobe_exporter.backend import CHOSEN, STATUS, Backend
from uprobe_exporter.decode.rawpage import PageLayout, RawDecoder
from uprobe_exporter.errors import TracefsError
from uprobe_exporter.kernel.session import ProbeSession
from uprobe_exporter.kernel.tracefs import Instance, Tracefs, find_tracefs
from uprobe_exporter.pipeline.calls import Pipeline
from uprobe_exporter.pipeline.pairing import PID_MAX_LIMIT, GoroutineKeys
from uprobe_exporter.pipeline.raw import RawPipeline
from uprobe_exporter.pipeline.render import Renderer
from uprobe_exporter.pipeline.text import TextPipeline
from uprobe_exporter.plan.binaries import BinaryChange, BinaryWatch
from uprobe_exporter.plan.config import Config
from uprobe_exporter.plan.probes import ProbeEvent
from uprobe_exporter.plan.resolve import plan_events
from uprobe_exporter.processes.identity import PodIdentities, pod_identities
from uprobe_exporter.processes.procfs import TgidCache, thread_exists
from uprobe_exporter.run.discover import Discoverer
from uprobe_exporter.run.jsonl import JsonlSink
from uprobe_exporter.run.metrics import start_metrics_server
from uprobe_exporter.run.rawreader import RawPipeReader
from uprobe_exporter.run.reader import TracePipeReader

log = logging.getLogger(__name__)
SWEEP_SECONDS = 5.0  # how often threads with pending calls are checked for having exited
PRESENCE_SECONDS = 2.0  # how often we check that our events are still registered
FINAL_FLUSH_SECONDS = 1.5


def _warn_if_own_interpreter(events: list[ProbeEvent]) -> None:
    """A probe on the Python binary we run on (a venv of Debian's python3.11) fires in our own frames too."""
    own = os.path.realpath(sys.executable)
    for path in sorted({ev.path for ev in events if os.path.realpath(ev.path) == own}):
        log.warning("%s is the Python this exporter runs on: its probes fire in the exporter's own threads too; "
                    "exclude them with comm = [\"python3*\"] (the exporter's threads are named %r) or a filter on "
                    "common_pid", path, _own_comm())


def _own_comm() -> str:
    try:
        with open("/proc/self/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:  # only a name for a message
        return "?"


def wall_offset_ns(samples: int = 3) -> int:
    """CLOCK_REALTIME − CLOCK_MONOTONIC: turns the ``mono`` trace clock into wall time. Each sample reads
    the real clock between two monotonic reads; the one with the smallest gap is kept (a preemption
    between two reads would otherwise move every timestamp by its length until the next refresh)."""
    best_gap, best = 1 << 62, 0
    for _ in range(samples):
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if after - before < best_gap:
            best_gap, best = after - before, real - (before + after) // 2
    return best


@dataclass
class Runtime:
    """Everything a running exporter holds, for housekeeping and the final summary."""

    pipeline: Pipeline
    reader: TracePipeReader | RawPipeReader
    sink: JsonlSink | None
    tgids: TgidCache
    binaries: BinaryWatch
    identities: PodIdentities | None = None
    discoverer: Discoverer | None = None
    kernel_lost: int = 0
    output_stuck: bool = False


def discover_events_max(config: Config) -> int:
    """The events discover probes may register at run time, at most: two per file (entry and return)."""
    return sum(config.exporter.discover_files_max * (2 if p.return_probe else 1)
               for p in config.probes if p.discover is not None)


def open_tracefs(config: Config) -> tuple[Tracefs, Instance]:
    tracefs = Tracefs(find_tracefs(config.exporter.tracefs))
    tracefs.check_writable()
    return tracefs, tracefs.instance(config.exporter.instance)


async def _housekeeping(rt: Runtime, session: ProbeSession) -> None:
    """Once a second: refresh the wall-clock offset, check that the probed binaries are still the files
    we probed, and forget the pending entries of threads the last sweep found exited; every
    PRESENCE_SECONDS: check that our events are still registered (someone may remove them: logged and
    counted, not served as registered); every SWEEP_SECONDS: find the threads (and the Go processes, for
    goroutines) that exited (their pending calls will never return) and forget the cached process ids
    (thread ids get reused)."""
    last_sweep = last_presence = time.monotonic()
    exited: set[int] = set()  # found exited by the last sweep, a second ago
    while True:
        await asyncio.sleep(1.0)
        if rt.pipeline.renderer is not None:
            rt.pipeline.renderer.wall_offset_ns = wall_offset_ns()
        pairing = rt.pipeline.pairing
        # A thread found exited may have returned just before it exited, that return still unread in the
        # kernel's buffer or held back for ordering: its entries are forgotten a second later.
        go_keys = rt.pipeline.go_keys
        for tid in exited:
            if _gone(tid, go_keys):
                pairing.evict_thread(tid)
        exited = set()
        for change in rt.binaries.check():
            _log_binary_change(change)
        if time.monotonic() - last_presence >= PRESENCE_SECONDS:
            last_presence = time.monotonic()
            try:
                session.check_present()
            except TracefsError as exc:
                log.error("%s", exc)
        if time.monotonic() - last_sweep >= SWEEP_SECONDS:
            last_sweep = time.monotonic()
            pending = pairing.threads()
            exited = {tid for tid in pending if _gone(tid, go_keys)}
            go_keys.prune(pending)
            pairing.drop_empty()
            rt.tgids.clear()
            if rt.identities is not None:
                rt.identities.forget_exited()
            if rt.pipeline.renderer is not None:
                rt.pipeline.renderer.forget_pids()


def _gone(key: int, go_keys: GoroutineKeys) -> bool:
    """A pairing key whose pending calls will never return: a thread that exited, or a Go goroutine
    (pairing.GoroutineKeys, above PID_MAX_LIMIT) whose process exited; a goroutine moves between threads,
    so its threads say nothing (a stale entry of a live one goes at its next call: unwound)."""
    if key <= PID_MAX_LIMIT:
        return not thread_exists(key)
    pid = go_keys.owner.get(key, 0)
    return pid > 0 and not thread_exists(pid)


def _log_binary_change(change: BinaryChange) -> None:
    """One line per change of a probed file (re-registering on the new file is not done at run time)."""
    if change.kind == "removed":
        log.warning("probed binary %s was removed: its probes stay on the file that was there", change.path)
    elif change.kind == "replaced":
        log.warning("probed binary %s was replaced by another file: its probes stay on the old file and miss "
                    "processes started from the new one; restart the exporter to probe it "
                    "(uprobe_exporter_binary_replaced_total)", change.path)
    else:
        log.warning("probed binary %s was modified in place: processes started from it now may run other code "
                    "at the probed offsets; restart the exporter to resolve them again "
                    "(uprobe_exporter_binary_replaced_total)", change.path)


class Signals:
    """SIGINT/SIGTERM set ``stop``, SIGHUP reopens the output, from before the probes are registered
    until after they are removed: a signal never interrupts registration or removal halfway; it is
    handled by the event loop once that synchronous work is done."""

    def __init__(self, sink: JsonlSink | None) -> None:
        self.stop = asyncio.Event()
        self.sink = sink

    def __enter__(self) -> Signals:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.sink.reopen if self.sink is not None else lambda: None)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def run(config: Config, problems: list[str]) -> bool:
    """Run the exporter until SIGINT/SIGTERM; raises UprobeExporterError subclasses on failure. Returns
    False when the JSON output was stuck at the end (a writer thread is blocked in write()).

    ``problems`` are those found validating ``config``. Order: tracefs access (without root nothing
    else matters), every configuration problem at once, the JSON output and the metrics listener (a
    bad path or a taken port fails before anything is registered), then the probes."""
    tracefs, instance = open_tracefs(config)
    events = plan_events(config, problems)
    _warn_if_own_interpreter(events)
    binaries = BinaryWatch(ev.path for ev in events)  # the files as they were when we resolved them
    sink = JsonlSink(config.jsonl.path, config.jsonl.max_queue_kb * 1024) if config.jsonl.enabled else None
    if sink is not None:
        await sink.open()
    metrics = start_metrics_server(config.metrics) if config.metrics.enabled else None
    identities = pod_identities(config.exporter.host_root, config.exporter.pods_dir)
    renderer = Renderer(wall_offset_ns(), identity_of=identities) if sink is not None else None
    tgids = TgidCache(tracefs.root / "saved_tgids")
    rt: Runtime | None = None
    try:
        with Signals(sink) as signals, ProbeSession(tracefs, instance, config.exporter.group, events,
                                                    config.exporter.buffer_size_kb,
                                                    config.exporter.stop_budget_seconds,
                                                    discover_events_max(config)) as session:
            pipeline, reader = _reader(config, session, instance, renderer, tgids, sink, identities)
            rt = Runtime(pipeline, reader, sink, tgids, binaries, identities)
            if any(p.discover is not None for p in config.probes):
                handlers = reader.decoder.handlers if isinstance(reader, RawPipeReader) else None
                rt.discoverer = Discoverer(config, session, pipeline, handlers, events, identities)
                rt.discoverer.scan()  # what runs now is probed before the first read
            # What exists now (modules, compiled parsers, the registry) lives as long as the process:
            # out of the collector's sight, a full collection no longer walks it (a scrape of 100
            # probes had a 50 % slower outlier every few scrapes without this).
            gc.freeze()
            try:
                if metrics is not None:
                    metrics.sources.binaries = binaries
                    metrics.sources.update(tracefs, instance, events, pipeline, sink, reader)
                    metrics.sources.vanished = session.vanished
                    if rt.discoverer is not None:
                        metrics.sources.extra.append(rt.discoverer)
                await _serve(rt, session, instance, signals.stop)
            finally:
                if metrics is not None:  # no scrape may hold a file of the instance while it is removed
                    metrics.close()
                    metrics = None
                reader.close()
                _log_summary(rt)
    finally:
        if metrics is not None:
            metrics.close()
        if sink is not None and not sink.stuck:
            await sink.close()
    return rt is None or not rt.output_stuck


def _reader(
    config: Config, session: ProbeSession, instance: Instance, renderer: Renderer | None, tgids: TgidCache,
    sink: JsonlSink | None, identities: PodIdentities | None = None, backend: Backend = CHOSEN,
) -> tuple[Pipeline, TracePipeReader | RawPipeReader]:
    """The pipeline and the reader the configuration asks for: text ``trace_pipe`` or raw pages, the
    raw ones on ``backend``'s twins (the text path's are the pairing and the histogram series)."""
    formats = session.formats.values()
    max_pending, label_values_max = config.exporter.max_pending_calls, config.metrics.label_values_max

    def submit(batch: tuple[bytes, int] | None) -> None:
        if batch is not None and sink is not None:
            sink.submit(*batch)

    if config.exporter.reader == "raw":
        raw = RawPipeline.of(config.probes, session.events, backend, renderer, max_pending, label_values_max, tgids,
                             identities)
        emitters = raw.emitters(formats)
        native = backend.native_emitters(emitters)
        others = "" if native == len(emitters) or backend.emit_plan is None else \
            "; the others run the record path (an event with a field the native emitter does not read)"
        log.info("raw reader: native path for %d of %d events; native parts: %s%s", native, len(emitters),
                 STATUS.describe(), others)
        decoder = RawDecoder(PageLayout.parse(instance.read_header_page()), emitters, raw.decode_errors, backend.walk)
        return raw, RawPipeReader(instance.root, instance.cpus(), decoder, backend.new_merge(),
                                  lambda located, lost: submit(raw.process_located(located, lost)))
    text = TextPipeline.of(config.probes, session.events, formats, backend, renderer, max_pending, label_values_max,
                           tgids, identities)
    log.info("text reader; native parts: %s", STATUS.describe())
    return text, TracePipeReader(instance.trace_pipe, lambda lines, final: submit(text.process(lines, final)))


async def _serve(rt: Runtime, session: ProbeSession, instance: Instance, stop: asyncio.Event) -> None:
    """One TaskGroup: reader, sink, housekeeping; on SIGINT/SIGTERM stop, drain and flush."""
    async with asyncio.TaskGroup() as tg:
        sink_task = tg.create_task(rt.sink.run()) if rt.sink is not None else None
        reader_task = tg.create_task(rt.reader.run())
        house_task = tg.create_task(_housekeeping(rt, session))
        discover_task = tg.create_task(rt.discoverer.run()) if rt.discoverer is not None else None
        log.info("%d events registered in %s; reading", len(session.registered), instance.root)
        await stop.wait()
        reader_task.cancel()
        house_task.cancel()
        if discover_task is not None:
            discover_task.cancel()
        session.stop_recording()
        rt.reader.drain()
        if rt.sink is not None and sink_task is not None:
            rt.sink.finish()
            try:
                async with asyncio.timeout(FINAL_FLUSH_SECONDS):
                    await asyncio.shield(sink_task)
            except TimeoutError:
                log.error("JSON output did not take the last records within %.1f s", FINAL_FLUSH_SECONDS)
                rt.output_stuck = True
                await rt.sink.abandon(sink_task)  # counts what got out as written, the rest dropped
    try:
        rt.kernel_lost = instance.read_lost()
    except TracefsError as exc:
        log.error("%s", exc)


def _log_summary(rt: Runtime) -> None:
    stats = rt.pipeline.statistics()
    pairing = rt.pipeline.pairing.statistics()
    written = rt.sink.records_written if rt.sink is not None else 0
    dropped = rt.sink.records_dropped if rt.sink is not None else 0
    log.info(
        "stopped: %d records parsed, %d written, %d dropped by the sink, %d lost in the kernel, "
        "%d unparsed lines, %d calls paired, %d pending",
        sum(stats.events.values()), written, dropped, rt.kernel_lost, sum(stats.parse_errors.values()),
        pairing.paired, pairing.pending)

