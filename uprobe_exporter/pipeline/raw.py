"""Pure: the raw reader's pipeline: batches of records located in ``trace_pipe_raw`` pages (in timestamp
order), each run by its event's emitter (rawemit.py), which counts, pairs and renders it straight from
the page bytes as the shared record path (calls.py) does for a ``TraceRecord``."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from uprobe_exporter.decode.rawpage import RAW_ERROR_REASONS, Handler, Located
from uprobe_exporter.decode.records import LostEvents
from uprobe_exporter.decode.unpack import UnpackPlan
from uprobe_exporter.kernel.formatfile import EventFormat
from uprobe_exporter.pipeline.calls import Pipeline, event_infos
from uprobe_exporter.pipeline.pairing import Pairing
from uprobe_exporter.pipeline.rawemit import Sinks, compile_emitter, native_emitter
from uprobe_exporter.pipeline.render import EventInfo, Renderer
from uprobe_exporter.plan.config import ProbeConfig
from uprobe_exporter.plan.probes import ProbeEvent
from uprobe_exporter.processes.podlogs import PodIdentity

if TYPE_CHECKING:
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
        super().__init__(infos, probes, renderer, pairing, label_values_max, tgid_of, identity_of)
        self.backend = backend
        self.decode_errors = dict.fromkeys(RAW_ERROR_REASONS, 0)  # the decoder's (RawDecoder.errors)
        self.lines = backend.lines()  # what the emitters rendered, taken per batch
        self.run = backend.run

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
        """Per event id, the emitter that counts, pairs and renders its raw records (``process_located``):
        the native one where the backend has it and it covers the event, else the Python one."""
        sinks = Sinks(self.event_counts, self.pairing, self.renderer, self.tgid_of, self.lines, self.negative_durations,
                      self.go_keys, self.pod_label)
        emit_plan = self.backend.emit_plan
        out = {}
        for f in formats:
            plan, route = UnpackPlan.of(f), self.routes[f.name]
            emitter = compile_emitter(plan, route, sinks)[0]
            out[f.id] = (emit_plan is not None and native_emitter(emit_plan, plan, route, sinks, emitter)) or emitter
        return out

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
