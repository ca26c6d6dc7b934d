"""Prometheus metrics: one collector that builds fresh families from a snapshot at every scrape.

Kernel truth is read when the exposition is rendered (``uprobe_profile`` hits, per-CPU ``stats``
losses); everything else comes from the pipeline's counters. A rendering serves every scrape for a
short while (``scrapeserver``: at most 0.25 s old). Renderings run on an HTTP server thread: they only
copy the pipeline's dicts and lists (single C-level operations under the GIL) and never block the
event loop. A failed read of tracefs is counted and the rest is served.
"""

from __future__ import annotations

import platform
import ssl
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from uprobe_exporter import __version__
from uprobe_exporter.decode.traceline import PARSE_ERROR_REASONS
from uprobe_exporter.errors import ConfigError, MetricsError, UprobeExporterError, mapped_oserror, os_errors
from uprobe_exporter.kernel.tracefs import Instance, Tracefs
from uprobe_exporter.pipeline.calls import Pipeline
from uprobe_exporter.pipeline.histogram import ProbeHistograms
from uprobe_exporter.pipeline.pairing import EVICTION_REASONS, Pairing
from uprobe_exporter.plan.binaries import BinaryWatch
from uprobe_exporter.plan.config import MetricsConfig
from uprobe_exporter.plan.probes import ProbeEvent
from uprobe_exporter.run.jsonl import JsonlSink
from uprobe_exporter.run.rawreader import RawPipeReader
from uprobe_exporter.run.reader import TracePipeReader
from uprobe_exporter.run.scrapeserver import Exposition, ScrapeServer, ScrapeStatistics, tls_context

LOST_REASONS = (("overrun", "overrun"), ("commit overrun", "commit_overrun"), ("dropped events", "dropped"))


@dataclass
class Sources:
    """What the collector reads; filled in by ``update`` once the probes are registered."""

    tracefs: Tracefs | None = None
    instance: Instance | None = None
    events: list[ProbeEvent] = field(default_factory=list)
    pipeline: Pipeline | None = None
    sink: JsonlSink | None = None
    reader: TracePipeReader | RawPipeReader | None = None
    binaries: BinaryWatch | None = None
    vanished: set[str] = field(default_factory=set)  # our events someone else removed (ProbeSession.vanished)
    scrape_errors: Counter[str] = field(default_factory=Counter)
    extra: list[Collector] = field(default_factory=list)  # more families (the discoverer's)
    scrapes: ScrapeStatistics | None = None  # set by start_metrics_server
    lock: threading.Lock = field(default_factory=threading.Lock)  # scrapes may run concurrently

    def count_scrape_error(self, source: str) -> None:
        with self.lock:
            self.scrape_errors[source] += 1

    def update(self, tracefs: Tracefs, instance: Instance, events: list[ProbeEvent], pipeline: Pipeline,
               sink: JsonlSink | None, reader: TracePipeReader | RawPipeReader | None) -> None:
        self.tracefs, self.instance, self.events = tracefs, instance, events
        self.sink, self.reader = sink, reader
        self.pipeline = pipeline  # last: the collector starts reading once this is set


def _histogram_family(histograms: dict[str, ProbeHistograms]) -> HistogramMetricFamily:
    label_names: list[str] = ["probe"]
    for h in histograms.values():
        label_names += [n for n in h.labels if n not in label_names]
    family = HistogramMetricFamily(
        "uprobe_call_duration_seconds", "Duration of paired entry→return calls, from the kernel timestamps.",
        labels=label_names)
    for probe, h in list(histograms.items()):
        for values, series in list(h.series.items()):
            counts = list(series.counts)
            by_name = dict(zip(h.labels, values, strict=True))
            labels = [probe, *(by_name.get(n, "") for n in label_names[1:])]
            cumulative, buckets = 0, []
            for bound, count in zip([*h.buckets, float("inf")], counts, strict=True):
                cumulative += count
                buckets.append((repr(float(bound)) if bound != float("inf") else "+Inf", cumulative))
            family.add_metric(labels, buckets, series.sum_ns / 1e9)
    return family


class UprobeCollector(Collector):
    """Every uprobe_* metric: kernel hit counters, records, call durations and the exporter's health."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterable[Metric]:
        s = self.sources
        info = GaugeMetricFamily("uprobe_exporter_build_info", "Version of the exporter, Python and kernel; 1.",
                                 labels=["version", "python", "kernel"])
        info.add_metric([__version__, platform.python_version(), platform.release()], 1)
        yield info
        registered = GaugeMetricFamily("uprobe_exporter_events_registered",
                                       "uprobe events the exporter has registered in its group.")
        registered.add_metric([], len({e.event for e in s.events}) - len(s.vanished) if s.pipeline is not None else 0)
        yield registered
        vanished = CounterMetricFamily("uprobe_exporter_events_vanished",
                                       "Our events that someone else removed while we ran (logged).")
        vanished.add_metric([], len(s.vanished))
        yield vanished
        for collector in list(s.extra):
            yield from collector.collect()
        if s.pipeline is None or s.tracefs is None or s.instance is None:
            yield from self._scrape_errors()
            return
        yield from self._kernel(s.tracefs, s.instance, s.events)
        if s.binaries is not None:
            yield self._binaries(s.binaries)
        yield from self._pipeline(s.pipeline)
        yield from self._scrape_errors()

    def _kernel(self, tracefs: Tracefs, instance: Instance, events: list[ProbeEvent]) -> Iterator[Metric]:
        hits = CounterMetricFamily(
            "uprobe_probe_hits_total", "Times the probed instruction ran, counted by the kernel (uprobe_profile) "
            "before filtering and before the ring buffer.", labels=["probe", "event", "path"])
        try:
            ours = {(e.group, e.event): e for e in events}
            per_event: dict[tuple[str, str, str], int] = {}  # a USDT event has a line per site: summed
            for kernel_event, n in tracefs.read_uprobe_hits():
                ev = ours.get((kernel_event.group, kernel_event.event))
                if ev is not None:
                    site = (ev.probe, ev.full_name, ev.path)
                    per_event[site] = per_event.get(site, 0) + n
            for labels, n in per_event.items():
                hits.add_metric(list(labels), n)
        except UprobeExporterError:
            self.sources.count_scrape_error("uprobe_profile")
        yield hits
        lost = CounterMetricFamily(
            "uprobe_exporter_kernel_lost_events_total", "Events the kernel could not keep for us (per-CPU stats of "
            "our instance: overwritten before read, commit overruns, dropped); in-band LOST markers are part of "
            "overrun.", labels=["cpu", "reason"])
        try:
            for cpu in instance.cpus():
                stats = instance.read_stats(cpu)
                for key, reason in LOST_REASONS:
                    lost.add_metric([str(cpu), reason], stats.get(key, 0))
        except UprobeExporterError:
            self.sources.count_scrape_error("stats")
        yield lost

    @staticmethod
    def _binaries(binaries: BinaryWatch) -> Metric:
        replaced = CounterMetricFamily(
            "uprobe_exporter_binary_replaced_total", "Times the file at a probed path was found replaced (another "
            "inode) or modified since the probes were registered on it: they stay on the file they were placed "
            "on; a restart probes the new one.", labels=["path"])
        for path, n in list(binaries.replaced.items()):
            replaced.add_metric([path], n)
        return replaced

    def _pipeline(self, pipeline: Pipeline) -> Iterator[Metric]:
        stats = pipeline.statistics()
        events = CounterMetricFamily("uprobe_events_total", "Records the exporter parsed from the kernel.",
                                     labels=["probe", "type"])
        kinds = {(e.probe, "return" if e.is_return else "entry") for e in self.sources.events}
        for probe, kind in sorted(kinds | set(stats.events)):
            events.add_metric([probe, kind], stats.events.get((probe, kind), 0))
        yield events
        errors = CounterMetricFamily("uprobe_exporter_parse_errors_total",
                                     "Trace lines (text reader) or events and pages (raw reader) that could not "
                                     "be decoded, by reason (text lines are logged at debug level).",
                                     labels=["reason"])
        reasons = self.sources.reader.error_reasons if self.sources.reader is not None else PARSE_ERROR_REASONS
        for reason in sorted({*reasons, *stats.parse_errors}):  # zeros too: rate() needs a start
            errors.add_metric([reason], stats.parse_errors.get(reason, 0))
        yield errors
        markers = CounterMetricFamily("uprobe_exporter_lost_markers_total",
                                      "'CPU:N [LOST EVENTS]' markers in the text stream, or raw pages flagged with "
                                      "missed events (their counts are "
                                      "already in uprobe_exporter_kernel_lost_events_total).")
        markers.add_metric([], stats.lost_markers)
        yield markers
        paired = sorted({e.probe for e in self.sources.events if e.is_return})
        yield from self._pairing(pipeline.pairing, paired)
        negative = CounterMetricFamily("uprobe_exporter_negative_durations_total",
                                       "Returns that paired with an entry younger than them (records out of "
                                       "order): emitted without a duration, never observed.", labels=["probe"])
        for probe in paired:
            negative.add_metric([probe], stats.negative_durations.get(probe, 0))
        yield negative
        if pipeline.histograms:
            yield _histogram_family(pipeline.histograms)
        folded = CounterMetricFamily("uprobe_exporter_label_values_folded_total",
                                     "Observations whose label value was replaced by __other__ (cardinality cap).",
                                     labels=["probe"])
        for probe, h in list(pipeline.histograms.items()):
            folded.add_metric([probe], h.folder.folded)
        yield folded
        sink = self.sources.sink
        w = CounterMetricFamily("uprobe_exporter_records_written_total", "JSON lines written.", labels=["sink"])
        d = CounterMetricFamily("uprobe_exporter_records_dropped_total",
                                "Records dropped: the output too slow (bounded queue full), or queued or in flight "
                                "when a write failed or the output stopped taking them.", labels=["sink"])
        we = CounterMetricFamily("uprobe_exporter_output_write_errors_total",
                                 "Writes of the output that failed (disk full, I/O error, reader gone); "
                                 "retried every second.", labels=["sink"])
        re = CounterMetricFamily("uprobe_exporter_output_reopen_errors_total",
                                 "Reopens of the output file (SIGHUP) that failed; retried every second, the old "
                                 "file written meanwhile.", labels=["sink"])
        if sink is not None:
            w.add_metric(["jsonl"], sink.records_written)
            d.add_metric(["jsonl"], sink.records_dropped)
            we.add_metric(["jsonl"], sink.write_errors)
            re.add_metric(["jsonl"], sink.reopen_errors)
        yield from (w, d, we, re)
        if self.sources.reader is not None:
            b = CounterMetricFamily("uprobe_exporter_read_bytes_total", "Bytes read from trace_pipe or trace_pipe_raw.")
            b.add_metric([], self.sources.reader.bytes_read)
            yield b

    @staticmethod
    def _pairing(pairing: Pairing, paired: list[str]) -> Iterator[Metric]:
        """Every paired probe has every series from the start, at 0: an absent series is not a zero."""
        st = pairing.statistics()
        pending = GaugeMetricFamily("uprobe_exporter_pending_calls",
                                    "Entries waiting for their return (bounded by exporter.max_pending_calls).",
                                    labels=["probe"])
        without = CounterMetricFamily("uprobe_exporter_returns_without_entry_total",
                                      "Returns whose entry was not seen (called before the exporter started, "
                                      "or the entry was lost).", labels=["probe"])
        evicted = CounterMetricFamily("uprobe_exporter_calls_evicted_total",
                                      "Entries that will never see their return: stack unwound past them "
                                      "(longjmp, exceptions), thread exited, or the pending table was full.",
                                      labels=["probe", "reason"])
        filtered = CounterMetricFamily("uprobe_exporter_returns_filtered_total",
                                       "Returns not emitted: their probe has an entry filter and their entry was "
                                       "not seen (the filter removed it, or the call began before the exporter).",
                                       labels=["probe"])
        for probe in paired:
            pending.add_metric([probe], st.pending_by_probe.get(probe, 0))
            without.add_metric([probe], st.returns_without_entry_by_probe.get(probe, 0))
            filtered.add_metric([probe], st.returns_filtered_by_probe.get(probe, 0))
            for reason in EVICTION_REASONS:
                evicted.add_metric([probe, reason], st.evicted_by_probe.get((probe, reason), 0))
        yield pending
        yield without
        yield filtered
        yield evicted

    def _scrape_errors(self) -> Iterator[Metric]:
        errors = CounterMetricFamily("uprobe_exporter_scrape_errors_total",
                                     "Scrapes that could not read a kernel file (the other metrics were served).",
                                     labels=["source"])
        for source in ("uprobe_profile", "stats"):
            errors.add_metric([source], self.sources.scrape_errors[source])
        yield errors
        if self.sources.scrapes is not None:
            requests = CounterMetricFamily("uprobe_exporter_scrapes_total",
                                           "Requests for the metrics (all served from shared renderings).")
            requests.add_metric([], self.sources.scrapes.requests)
            yield requests
            renderings = CounterMetricFamily("uprobe_exporter_scrape_renderings_total",
                                             "Renderings of the metrics (at most one per 0.25 s, whatever the "
                                             "number of scrapers).")
            renderings.add_metric([], self.sources.scrapes.renderings)
            yield renderings


@dataclass
class MetricsServer:
    server: ScrapeServer
    thread: threading.Thread
    sources: Sources
    exposition: Exposition

    def close(self) -> None:
        """Stop serving; returns once no rendering runs (the instance's files may be removed next)."""
        self.server.close()
        self.exposition.close(2)
        self.thread.join(2)


def _check_readable(path: str, key: str) -> None:
    with os_errors(ConfigError, f"metrics.{key}: cannot read '{path}'", path=path, fix="give a readable PEM file"), \
            open(path, "rb") as f:
        f.read(1)


def start_metrics_server(config: MetricsConfig) -> MetricsServer:
    """Bind and serve /metrics before any probe is registered: a taken port fails early and cleanly."""
    for key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        if getattr(config, key):
            _check_readable(getattr(config, key), key)
    registry = CollectorRegistry(auto_describe=True)
    exposition = Exposition(registry)
    sources = Sources(scrapes=exposition.stats)
    registry.register(UprobeCollector(sources))
    ProcessCollector(registry=registry)
    listen = f"{config.host}:{config.port}"
    try:
        tls = None
        if config.tls_cert_file and config.tls_key_file:
            tls = tls_context(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
        server = ScrapeServer(config.host, config.port, exposition, tls)
    except ssl.SSLError as exc:
        raise ConfigError([f"metrics: TLS setup failed ({exc.reason or exc}); check tls_cert_file, tls_key_file "
                           "and tls_client_ca_file"]) from exc
    except OSError as exc:  # after ssl.SSLError, an OSError too
        raise mapped_oserror(exc, MetricsError, f"metrics.listen: cannot listen on {listen}",
                             fix="choose another address or port") from exc
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread, sources, exposition)
