"""Pure: the raw reader's pipeline: batches of records located in ``trace_pipe_raw`` pages (in timestamp
order), each run by its event's handler: the record path (calls.py: the record built from the page,
counted, paired, rendered), or its native twin, an emitter (native/emit.c, described by rawemit.py) that
does the same straight from the page bytes."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

import orjson

from uprobe_exporter.decode.rawpage import RAW_ERROR_REASONS, Handler, Located
from uprobe_exporter.decode.records import LostEvents
from uprobe_exporter.decode.unpack import CommCache, RecordBuilder, UnpackPlan
from uprobe_exporter.kernel.formatfile import EventFormat
from uprobe_exporter.pipeline.calls import Pipeline, event_infos
from uprobe_exporter.pipeline.pairing import Pairing
from uprobe_exporter.pipeline.rawemit import Sinks, context, native_emitter
from uprobe_exporter.pipeline.render import EventInfo, Renderer
from uprobe_exporter.plan.config import ProbeConfig
from uprobe_exporter.plan.probes import ProbeEvent
from uprobe_exporter.processes.podlogs import PodIdentity

if TYPE_CHECKING:
    from uprobe_exporter._native import EmitContext
    from uprobe_exporter.backend import Backend


class RunLocated(Protocol):
    """The batch loop: ``run_located`` below, or its native twin ``_native.run``."""

    def __call__(self, located: Sequence[Located], errors: dict[str, int], struct_error: type[Exception],
                 /) -> None: ...


def run_located(located: Sequence[Located], errors: dict[str, int], struct_error: type[Exception]) -> None:
    """The reference batch loop: each located record run by its emitter; a record shorter than its
    format says is counted."""
    for ts, emit, page, offset, cpu in located:
        try:
            emit(page, offset, ts, cpu)
        except struct_error:
            errors["record"] += 1


class RawPipeline(Pipeline):
    """Runs batches of located records through the events' emitters, the twins of the backend."""

    def __init__(
        self,
        infos: dict[str, EventInfo],
        probes: Iterable[ProbeConfig],
        renderer: Renderer | None,
        pairing: Pairing,
        backend: Backend,
        label_values_max: int = 100,
        tgid_of: Callable[[int], int] = lambda tid: 0,
        identity_of: Callable[[int], PodIdentity | None] | None = None,
    ) -> None:
        super().__init__(infos, probes, renderer, pairing, label_values_max, tgid_of, identity_of, backend.histogram)
        self.backend = backend
        self.decode_errors = dict.fromkeys(RAW_ERROR_REASONS, 0)  # the decoder's (RawDecoder.errors)
        self.lines = backend.lines()  # what the emitters rendered, taken per batch
        self.run = backend.run
        self.comms = CommCache()  # the thread names of the raw records
        if renderer is not None:
            renderer.use_clock(backend.clock)
        self.context: EmitContext | None = None  # what the native emitters write to
        if backend.emit_context is not None:
            r = renderer
            self.context = context(backend.emit_context, Sinks(
                pairing=pairing.core, counts=self.event_counts, negative=self.negative_durations, lines=self.lines,
                clock=r.clock if r else None, by_thread=r.by_thread if r else None,
                thread_middle=r.thread_middle if r else None, tgid_of=tgid_of, comms=self.comms,
                new_comm=self.comms.new, dumps=orjson.dumps, pod_label=self.pod_label, go_key=self.go_keys.key))

    @classmethod
    def of(
        cls, probes: Iterable[ProbeConfig], events: Iterable[ProbeEvent], backend: Backend,
        renderer: Renderer | None, max_pending: int, label_values_max: int, tgid_of: Callable[[int], int],
        identity_of: Callable[[int], PodIdentity | None] | None = None,
    ) -> RawPipeline:
        """The pipeline of the registered ``events`` on ``backend``'s twins."""
        probes = tuple(probes)
        return cls(event_infos(events, probes), probes, renderer, Pairing(max_pending, twin=backend.pairing),
                   backend, label_values_max, tgid_of, identity_of)

    def _add_formats(self, formats: list[EventFormat]) -> dict[int, Handler]:
        return self.emitters(formats)

    def emitters(self, formats: Iterable[EventFormat]) -> dict[int, Handler]:
        """Per event id, the handler that counts, pairs and renders its raw records (``process_located``):
        the native emitter where the backend has one, else the record path itself."""
        emit_plan, ctx = self.backend.emit_plan, self.context
        out = {}
        for f in formats:
            handler = self.record_handler(f)
            native = (native_emitter(emit_plan, UnpackPlan.of(f), self.routes[f.name], ctx, handler)
                      if emit_plan is not None and ctx is not None else None)
            out[f.id] = native or handler
        return out

    def record_handler(self, fmt: EventFormat) -> Handler:
        """The record path as a raw handler: the record built from the page, ``_record``, its line kept."""
        build, record, append = RecordBuilder.compile(fmt, self.comms).build, self._record, self.lines.append

        def handle(page: bytes, offset: int, ts_ns: int, cpu: int) -> None:
            line = record(build(page, offset, ts_ns, cpu))
            if line is not None:
                append(line)
        return handle

    def process_located(self, located: Sequence[Located], lost: list[LostEvents]) -> tuple[bytes, int] | None:
        """The raw reader's batch: records located in pages (in timestamp order), each run by its event's
        emitter, and the CPUs' lost-event markers; returns the JSON lines like ``process_items``."""
        for item in lost:
            self._lost(item)
        self.run(located, self.decode_errors, struct.error)
        if self.renderer is None:
            return None
        batch: tuple[bytes, int] = self.lines.take()
        return batch
