"""Pure: the per-record reference logic shared by both pipelines: counting, pairing, latency histograms
and JSON rendering of ``TraceRecord``s in timestamp order, and the statistics.

Two pipelines build on it, one per reader: ``text.TextPipeline`` (batches of ``trace_pipe`` lines,
parsed into records) and ``raw.RawPipeline`` (batches of records located in ``trace_pipe_raw`` pages,
which the events' emitters count, pair and render without a record object, as ``Pipeline._record``
does). Both return the JSON lines of a batch as one ``bytes`` (or None when JSON output is off).
Nothing here does I/O: looking up a process id the kernel did not know is a callable given by the daemon.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from uprobe_exporter.decode.rawpage import Handler
from uprobe_exporter.decode.records import LostEvents, TraceRecord
from uprobe_exporter.kernel.formatfile import EventFormat
from uprobe_exporter.pipeline.histogram import (
    COMM_LABEL,
    NO_LABELS,
    Histogram,
    LabelFolder,
    ProbeHistograms,
    SeriesFactory,
    labels_kind,
)
from uprobe_exporter.pipeline.pairing import GoroutineKeys, Pairing
from uprobe_exporter.pipeline.render import EventInfo, Renderer
from uprobe_exporter.plan.config import POD_LABELS, ProbeConfig
from uprobe_exporter.plan.probes import ProbeEvent
from uprobe_exporter.processes.podlogs import PodIdentity


class Route(NamedTuple):
    """What the pipeline does with one event's records (a tuple: the record path unpacks it per record)."""

    info: EventInfo
    paired: bool  # its probe has a return probe: entries and returns are paired
    histograms: ProbeHistograms | None  # its probe's latency histograms
    labels_at_return: frozenset[str]  # histogram labels from the return's own arguments (not also in args)
    labels_kind: str  # NO_LABELS, COMM_LABEL or ANY_LABELS: what an entry keeps for its return
    entry_filtered: bool  # its probe's entry has a kernel filter: a return without its entry is not emitted
    # USDT: labels in both args and return_args; a return closes the innermost entry only if they agree
    match: frozenset[str] = frozenset()

@dataclass(frozen=True, slots=True)
class PipelineStats:
    events: dict[tuple[str, str], int]  # (probe, type) → records parsed
    parse_errors: dict[str, int]  # reason → lines (text) or events and pages (raw)
    lost_markers: int  # "CPU:N [LOST M EVENTS]" lines, or pages flagged with missed events
    lost_inband: int  # the sum of their counts (a part of the per-CPU stats overrun)
    negative_durations: dict[str, int]  # probe → returns paired with a younger entry (never observed)


def event_infos(events: Iterable[ProbeEvent], probes: Iterable[ProbeConfig]) -> dict[str, EventInfo]:
    by_name = {p.name: p for p in probes}
    return {
        e.event: EventInfo(e.probe, "return" if e.is_return else "entry", e.full_name, by_name[e.probe].labels,
                           e.usdt)
        for e in events
    }


class Pipeline:
    """What both pipelines share: the routes of the events, the pairing, the histograms, the counts, and
    the record path (``process_items``: the reference the raw pipeline's emitters are compared with)."""

    def __init__(
        self,
        infos: dict[str, EventInfo],
        probes: Iterable[ProbeConfig],
        renderer: Renderer | None,
        pairing: Pairing,
        label_values_max: int = 100,
        tgid_of: Callable[[int], int] = lambda tid: 0,
        identity_of: Callable[[int], PodIdentity | None] | None = None,
        new_series: SeriesFactory = Histogram,
    ) -> None:
        self.infos = infos
        self.renderer = renderer
        self.pairing = pairing
        self.tgid_of = tgid_of
        self.identity_of = identity_of  # a process id → its pod, for the k8s_* histogram labels
        probes = tuple(probes)
        self.paired = {p.name for p in probes if p.return_probe}
        # a return whose entry a kernel filter removed is not emitted (the pairing counts it)
        # a return_filter, when given, alone decides which returns are emitted
        entry_filtered = {p.name for p in probes if p.return_probe and p.filter and not p.return_filter}
        pairing.set_entry_filtered(entry_filtered)
        self.histograms = {
            p.name: ProbeHistograms(p.buckets, p.labels, LabelFolder(label_values_max), new_series=new_series)
            for p in probes if p.latency
        }
        self.entry_filtered = entry_filtered
        self.probes = {p.name: p for p in probes}
        self.routes = {name: self._route(info) for name, info in infos.items()}
        self.negative_durations: dict[str, int] = dict.fromkeys(sorted(self.paired), 0)
        self.go_keys = GoroutineKeys(tgid_of)  # Go: pairing keys per (process, g)
        self.event_counts: dict[str, int] = dict.fromkeys(infos, 0)  # not a Counter: += is 3x cheaper
        self.parse_errors: Counter[str] = Counter()  # the text parser's, by reason
        self.decode_errors: dict[str, int] = {}  # the raw decoder's, by reason (kept by the decoder)
        self.lost_markers = 0
        self.lost_inband = 0

    def pod_label(self, tid: int, label: str) -> str:
        """The value of a ``k8s_*`` label for a thread: its process's pod (namespace, pod, container), or ""."""
        if self.identity_of is None:
            return ""
        pid = self.tgid_of(tid)
        ident = self.identity_of(pid) if pid else None
        return getattr(ident, POD_LABELS[label]) if ident is not None else ""

    def _route(self, info: EventInfo) -> Route:
        p = self.probes[info.probe]
        # labels of the return's own arguments; one named in both args and return_args is the entry's
        return_args = {n for n, _ in p.return_args} - {n for n, _ in p.args}
        match = {n for n, _ in p.return_args} & {n for n, _ in p.args} if p.usdt else set()
        return Route(info, info.probe in self.paired, self.histograms.get(info.probe),
                     frozenset(x for x in info.labels if x in return_args),
                     labels_kind(info.labels, info.probe in self.histograms), info.probe in self.entry_filtered,
                     frozenset(x for x in info.labels if x in match))

    def add_events(self, events: Iterable[ProbeEvent], formats: Iterable[EventFormat]) -> dict[int, Handler]:
        """Events registered at run time (a discovered file): their routes and counts, and what reads
        their records (``_add_formats``: the raw pipeline's emitters, to add to the decoder's handlers
        before they are enabled). Other threads (a scrape) read ``infos``: it is replaced, never changed
        in place."""
        infos = event_infos(events, self.probes.values())
        self.infos = {**self.infos, **infos}
        for name, info in infos.items():
            self.routes[name] = self._route(info)
            self.event_counts.setdefault(name, 0)
        return self._add_formats(list(formats))

    def _add_formats(self, formats: list[EventFormat]) -> dict[int, Handler]:
        return {}

    def process_items(self, items: list[TraceRecord | LostEvents]) -> tuple[bytes, int] | None:
        """Count, pair, render records in timestamp order (and count lost-event markers)."""
        out: list[bytes] = []
        append, record = out.append, self._record
        for item in items:
            if type(item) is LostEvents:
                self._lost(item)
                continue
            chunk = record(item)  # type: ignore[arg-type]  # not LostEvents: a TraceRecord
            if chunk is not None:
                append(chunk)
        return (b"".join(out), len(out)) if self.renderer is not None else None

    def _lost(self, item: LostEvents) -> None:
        self.lost_markers += 1
        self.lost_inband += item.count or 0

    def _record(self, rec: TraceRecord) -> bytes | None:
        # indexes, not attribute names: this runs once per record (0 event, 1 tid, 2 tgid, 4 ts_ns,
        # 5 comm, 8 is_return, 9 sp, 11 key: a Go program's goroutine, else 0 and the thread pairs)
        name = rec[0]
        info, paired, hist, labels_at_return, kind, entry_filtered, match = self.routes[name]
        duration = None
        if paired:
            if not rec[8]:
                self.event_counts[name] += 1
                # label values are taken at the entry (comm, the entry's args) and travel with the frame
                extra = () if kind is NO_LABELS else (
                    (rec[5],) if kind is COMM_LABEL else _label_values(rec, info.labels, None, frozenset(),
                                                                       self.pod_label))
                self.pairing.enter(info.probe, self.go_keys.key(rec[1], rec[11]) if rec[11] else rec[1], rec[9], rec[4],
                                   extra)
            else:
                frame = (self.pairing.leave_matching(info.probe, rec[1], _wanted(rec, info.labels, match)) if match
                         else self.pairing.leave(info.probe, self.go_keys.key(rec[1], rec[11]) if rec[11] else rec[1],
                                                 rec[9]))
                if frame is None and entry_filtered:
                    return None  # its entry was filtered in the kernel (the pairing counted it)
                self.event_counts[name] += 1
                if frame is not None:
                    duration = rec[4] - frame[1]
                    if duration < 0:  # only records out of order can do this: counted, never observed
                        self.negative_durations[info.probe] += 1
                        duration = None
                    elif hist is not None:
                        values = (_label_values(rec, info.labels, frame[2], labels_at_return, self.pod_label)
                                  if labels_at_return
                                  else frame[2])
                        hist.observe(values, duration)
        else:
            self.event_counts[name] += 1
        if self.renderer is None:
            return None
        return self.renderer.render(rec, info, duration, rec[2] or self.tgid_of(rec[1]))

    def statistics(self) -> PipelineStats:
        events: Counter[tuple[str, str]] = Counter()
        for name, n in list(self.event_counts.items()):
            info = self.infos[name]
            events[info.probe, info.type] += n
        errors = dict(self.parse_errors)
        for reason, n in list(self.decode_errors.items()):
            errors[reason] = errors.get(reason, 0) + n
        return PipelineStats(dict(events), errors, self.lost_markers, self.lost_inband,
                             dict(self.negative_durations))


def _wanted(rec: TraceRecord, labels: tuple[str, ...], match: frozenset[str]) -> tuple[str | None, ...]:
    """What a USDT return requires of the entry it closes: its values of the labels in ``match``."""
    return tuple(str(rec.args[name]) if name in match else None for name in labels)


def _label_values(
    rec: TraceRecord, labels: tuple[str, ...], entry: tuple[str, ...] | None, at_return: frozenset[str] = frozenset(),
    pod_label: Callable[[int, str], str] = lambda tid, label: "",
) -> tuple[str, ...]:
    """Label values from the record (comm, its pod, its args); at a return, the entry's values except for
    the labels taken at the return (``at_return``)."""
    values = []
    for i, name in enumerate(labels):
        if name in rec.args and (entry is None or name in at_return):
            values.append(str(rec.args[name]))
        elif entry is not None:
            values.append(entry[i])
        else:
            values.append(rec.comm if name == "comm" else pod_label(rec.tid, name) if name in POD_LABELS else "")
    return tuple(values)
