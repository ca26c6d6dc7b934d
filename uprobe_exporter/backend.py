"""The backend, chosen in one place: for every stage of the hot path, its Python reference or its native
twin (the ``uprobe_exporter._native`` extension, sources in ``native/``).

=============================  =================================  ==============================
stage                          Python reference                   native twin
=============================  =================================  ==============================
page walk                      ``decode.rawpage.walk``            ``_native.locate`` (walk.c)
cross-CPU merge                ``decode.merge.CpuMerge``          ``_native.Merge`` (merge.c)
batch loop                     ``pipeline.raw.run_located``       ``_native.run`` (walk.c)
pairing                        ``pipeline.pairing.PythonPairing`` ``_native.Pairing`` (pairing.c)
lines of a batch               ``pipeline.lines.LineList``        ``_native.Lines`` (lines.c)
emitter of an event            the record path (``RawPipeline.   ``_native.EmitPlan`` (emit.c), fed
                               record_handler``)                  through ``_native.EmitContext``
renderer's clock               ``pipeline.render.PyClock``        ``_native.Clock`` (emit.c)
latency histogram series       ``pipeline.histogram.Histogram``   ``_native.Histogram`` (histogram.c),
                                                                  observed in C by ``EmitPlan``
=============================  =================================  ==============================

``PYTHON`` has the references, ``NATIVE`` the twins (None when the extension is not built, does not
import, or ``UPROBE_EXPORTER_PURE=1``, which forces the references everywhere: the extension is then
not even imported), ``CHOSEN`` the one the daemon passes down. The stages' ``typing.Protocol``s
(``Walk``, ``Merge``, ``RunLocated``, ``PairingCore``, ``Lines``) say what both twins implement; mypy
checks both records against them. Nothing else imports the extension (tests/unit/test_layering.py).
``STATUS`` says whether the native path is on and, if not, why (nativestatus.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from uprobe_exporter.decode.merge import HOLD_NS, MAX_HELD, CpuMerge, Merge
from uprobe_exporter.decode.rawpage import Located, Walk, walk
from uprobe_exporter.nativestatus import NativeStatus, native_status
from uprobe_exporter.pipeline.histogram import Histogram, SeriesFactory
from uprobe_exporter.pipeline.lines import LineList, Lines
from uprobe_exporter.pipeline.pairing import Frame, PairingCore, PythonPairing
from uprobe_exporter.pipeline.raw import RunLocated, run_located
from uprobe_exporter.pipeline.render import Clock, PyClock

if TYPE_CHECKING:
    from uprobe_exporter._native import EmitContext, EmitPlan
    from uprobe_exporter._native import Merge as MergeCore


@dataclass(frozen=True, slots=True)
class Backend:
    """One implementation of every stage of the hot path."""

    name: str  # "python" or "native": what the daemon logs
    walk: Walk  # the page walk (RawDecoder.walk)
    merge: Callable[[int, int], Merge]  # (hold_ns, max_held) → the cross-CPU merge the walk fills
    run: RunLocated  # the batch loop over located records (RawPipeline.process_located)
    pairing: Callable[[int, int], PairingCore]  # (max_pending, max_depth) → the pairing (Pairing's core)
    lines: Callable[[], Lines]  # the JSON lines of a batch, which the emitters append to
    clock: Callable[[int], Clock]  # wall_offset_ns → the renderer's clock (Renderer.use_clock)
    emit_plan: type[EmitPlan] | None  # the native emitter of an event; None: every event runs the record path
    emit_context: type[EmitContext] | None  # what the native emitters of a pipeline write to (rawemit.Sinks)
    histogram: SeriesFactory  # bounds_ns → one latency histogram series (ProbeHistograms.new_series)

    def new_merge(self, hold_ns: int = HOLD_NS, max_held: int = MAX_HELD) -> Merge:
        return self.merge(hold_ns, max_held)

    def native_emitters(self, handlers: dict[int, Any]) -> int:
        """How many of the events' emitters are native."""
        plan = self.emit_plan
        return 0 if plan is None else sum(isinstance(h, plan) for h in handlers.values())


PYTHON = Backend("python", walk, CpuMerge, run_located, PythonPairing, LineList, PyClock, None, None, Histogram)


class NativeCpuMerge:
    """``CpuMerge``'s protocol over ``_native.Merge``, its exact twin: the native walk puts the records
    straight into it, and ``push`` releases them as a ``_native.Released`` that ``_native.run`` emits
    without a Python object per record."""

    def __init__(self, core: MergeCore) -> None:
        self.core = core
        self._run_start = 0

    @property
    def hold_ns(self) -> int:
        return self.core.hold_ns

    @property
    def waiting(self) -> int:
        return self.core.held

    def new_run(self) -> MergeCore:
        self._run_start = self.core.located
        return self.core

    def last_ts(self, run: Any) -> int | None:
        return self.core.last_ts if self.core.located > self._run_start else None

    def push(self, runs: list[Any], now_ns: int, final: bool = False) -> Sequence[Located]:
        return cast(Sequence[Located], self.core.push(now_ns, final))  # a _native.Released


def _native() -> tuple[Backend | None, NativeStatus]:
    """The native backend, if the extension is built, imports and is not switched off; and why not."""
    status = native_status()  # imports the extension once, unless UPROBE_EXPORTER_PURE is set
    if not status.active:
        return None, status
    from uprobe_exporter import _native as ext

    def merge(hold_ns: int, max_held: int) -> Merge:
        return NativeCpuMerge(ext.Merge(hold_ns, max_held))

    def pairing(max_pending: int, max_depth: int) -> PairingCore:
        return ext.Pairing(Frame, max_pending, max_depth)

    return (Backend("native", ext.locate, merge, ext.run, pairing, ext.Lines, ext.Clock, ext.EmitPlan,
                    ext.EmitContext, ext.Histogram), status)


NATIVE, STATUS = _native()
CHOSEN: Backend = NATIVE or PYTHON  # the native twins where built, unless switched off
