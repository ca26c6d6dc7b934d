"""Wiring: config → resolve → register → one TaskGroup (reader, sink, housekeeping) → clean exit.

Shutdown (SIGINT, SIGTERM, an error, or the JSON reader going away): stop reading, disable our
events, drain what the kernel still holds, flush the sink, remove our events and our instance. The
reader never blocks, so this takes milliseconds even when no event ever arrived.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from uprobe_exporter.config import Config
from uprobe_exporter.errors import TracefsError
from uprobe_exporter.jsonl import JsonlSink
from uprobe_exporter.kerneltext import parse_saved_tgids
from uprobe_exporter.metrics import start_metrics_server
from uprobe_exporter.pairing import Pairing
from uprobe_exporter.pipeline import Pipeline, event_infos
from uprobe_exporter.reader import TracePipeReader
from uprobe_exporter.render import Renderer
from uprobe_exporter.resolve import plan_events
from uprobe_exporter.session import ProbeSession
from uprobe_exporter.tracefs import Instance, Tracefs, find_tracefs, read_text
from uprobe_exporter.traceline import TextParser

log = logging.getLogger(__name__)
SWEEP_SECONDS = 5.0  # how often threads with pending calls are checked for having exited
FINAL_FLUSH_SECONDS = 1.5


def wall_offset_ns() -> int:
    """CLOCK_REALTIME − CLOCK_MONOTONIC: turns the ``mono`` trace clock into wall time."""
    return time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class TgidCache:
    """Process id of a thread when the kernel printed ``(-------)``: its tgid map is filled at the
    thread's next context switch (kernel/trace/trace.c: tracing_record_taskinfo_sched_switch()), so a
    line read before that has none. Ask ``/proc/<tid>/status`` first; if the thread has exited since,
    its last switch has filled the map: read it back from ``saved_tgids``."""

    def __init__(self, saved_tgids: Path, proc: str = "/proc", size: int = 4096) -> None:
        self.saved_tgids = saved_tgids
        self.proc = proc
        self.size = size
        self.cache: dict[int, int] = {}

    def _from_proc(self, tid: int) -> int:
        try:
            with open(f"{self.proc}/{tid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Tgid:"):
                        return int(line.split()[1])
        except OSError:
            pass  # the thread has exited
        return 0

    def _from_saved_tgids(self, tid: int) -> int:
        try:
            return parse_saved_tgids(read_text(self.saved_tgids)).get(tid, 0)
        except TracefsError as exc:
            log.debug("%s", exc)
            return 0

    def __call__(self, tid: int) -> int:
        tgid = self.cache.get(tid)
        if tgid is None:
            tgid = self._from_proc(tid) or self._from_saved_tgids(tid)
            if not tgid:
                log.debug("process id of thread %d unknown", tid)
            if len(self.cache) >= self.size:
                self.cache.clear()
            self.cache[tid] = tgid
        return tgid


@dataclass
class Runtime:
    """Everything a running exporter holds, for housekeeping and the final summary."""

    pipeline: Pipeline
    reader: TracePipeReader
    sink: JsonlSink | None
    renderer: Renderer | None
    kernel_lost: int = 0
    output_stuck: bool = False


def open_tracefs(config: Config) -> tuple[Tracefs, Instance]:
    tracefs = Tracefs(find_tracefs(config.exporter.tracefs))
    tracefs.check_writable()
    return tracefs, tracefs.instance(config.exporter.instance)


async def _housekeeping(rt: Runtime, proc: str = "/proc") -> None:
    """Once a second: refresh the wall-clock offset; every SWEEP_SECONDS: forget threads that exited."""
    last_sweep = time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        if rt.renderer is not None:
            rt.renderer.wall_offset_ns = wall_offset_ns()
        if time.monotonic() - last_sweep >= SWEEP_SECONDS:
            last_sweep = time.monotonic()
            pairing = rt.pipeline.pairing
            for tid in pairing.threads():
                if not os.path.exists(f"{proc}/{tid}"):
                    pairing.evict_thread(tid)


def _install_signals(stop: asyncio.Event, sink: JsonlSink | None) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if sink is not None:
        loop.add_signal_handler(signal.SIGHUP, sink.reopen)

    def restore() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    return restore


async def run(config: Config, problems: list[str]) -> bool:
    """Run the exporter until SIGINT/SIGTERM; raises UprobeExporterError subclasses on failure. Returns
    False when the JSON output was stuck at the end (a writer thread is blocked in write()).

    ``problems`` are those found validating ``config``. Order: tracefs access (without root nothing
    else matters), every configuration problem at once, the metrics listener (a taken port fails before
    anything is registered), then the probes."""
    tracefs, instance = open_tracefs(config)
    events = plan_events(config, problems)
    metrics = start_metrics_server(config.metrics) if config.metrics.enabled else None
    try:
        with ProbeSession(tracefs, instance, config.exporter.group, events,
                          config.exporter.buffer_size_kb) as session:
            sink = JsonlSink(config.jsonl.path, config.jsonl.max_queue_kb * 1024) if config.jsonl.enabled else None
            renderer = Renderer(wall_offset_ns()) if sink is not None else None
            pipeline = Pipeline(
                TextParser.for_formats(session.formats.values()), event_infos(events, config.probes),
                config.probes, renderer, Pairing(config.exporter.max_pending_calls),
                config.metrics.label_values_max, TgidCache(tracefs.root / "saved_tgids"))

            def on_lines(lines: list[str], final: bool) -> None:
                batch = pipeline.process(lines, final)
                if batch and sink is not None:
                    sink.submit(batch, batch.count(b"\n"))

            reader = TracePipeReader(instance.trace_pipe, on_lines)
            rt = Runtime(pipeline, reader, sink, renderer)
            if metrics is not None:
                metrics.sources.update(tracefs, instance, events, pipeline, sink, reader)
            try:
                await _serve(rt, session, instance)
            finally:
                reader.close()
                _log_summary(rt)
    finally:
        if metrics is not None:
            metrics.close()
    return not rt.output_stuck


async def _serve(rt: Runtime, session: ProbeSession, instance: Instance) -> None:
    """One TaskGroup: reader, sink, housekeeping; on SIGINT/SIGTERM stop, drain and flush."""
    stop = asyncio.Event()
    restore = _install_signals(stop, rt.sink)
    try:
        async with asyncio.TaskGroup() as tg:
            sink_task = tg.create_task(rt.sink.run()) if rt.sink is not None else None
            reader_task = tg.create_task(rt.reader.run())
            house_task = tg.create_task(_housekeeping(rt))
            log.info("%d events registered in %s; reading", len(session.registered), instance.root)
            await stop.wait()
            reader_task.cancel()
            house_task.cancel()
            session.disable()
            rt.reader.drain()
            rt.kernel_lost = instance.read_lost()
            if rt.sink is not None and sink_task is not None:
                rt.sink.finish()
                try:
                    async with asyncio.timeout(FINAL_FLUSH_SECONDS):
                        await asyncio.shield(sink_task)
                except TimeoutError:
                    log.error("JSON output did not take the last records within %.1f s", FINAL_FLUSH_SECONDS)
                    rt.output_stuck = True
                    sink_task.cancel()
    finally:
        restore()


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

