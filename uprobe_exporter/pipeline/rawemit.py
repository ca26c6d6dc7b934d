"""Pure: what the raw reader's native emitters are built from (``_native.EmitPlan``, native/emit.c).

An emitter does for one record, straight from the page bytes, what the record path does for it
(``RecordBuilder`` → ``Pipeline._record`` → ``Renderer.render``, which stays the reference, the
handler when the extension is absent or ``UPROBE_EXPORTER_PURE=1``, and the native emitter's fallback for
anomalies): count it, pair an entry with its return, put the call's duration in the latency histogram
and render the JSON line. ``native_emitter`` describes an event's fields, arguments and histogram labels
to C; ``Sinks`` names, slot by slot, what every native emitter of a pipeline writes to (the keyword
arguments of ``_native.EmitContext``, which ``context`` builds from it; nothing runs on a ``Sinks``).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from uprobe_exporter.decode.rawpage import Handler
from uprobe_exporter.decode.unpack import CommCache, UnpackPlan
from uprobe_exporter.kernel.formatfile import Field, FieldKind
from uprobe_exporter.pipeline.calls import Route
from uprobe_exporter.pipeline.histogram import COMM_LABEL, NO_LABELS
from uprobe_exporter.pipeline.lines import Lines
from uprobe_exporter.pipeline.render import Clock
from uprobe_exporter.plan.config import POD_LABELS
from uprobe_exporter.plan.kernelabi import (
    COMMON_PID,
    GOSTRING_LEN_PREFIX,
    HIDDEN_COMM,
    HIDDEN_G,
    HIDDEN_G_HI,
    HIDDEN_IP_DELTA,
    HIDDEN_RET_ADDR,
    HIDDEN_SP,
    HIDDEN_SP_RET,
    PROBE_FUNC,
    PROBE_IP,
    PROBE_RET_IP,
)

if TYPE_CHECKING:
    from uprobe_exporter._native import EmitContext, EmitPlan

# native/emit.c: argument kinds, label sources, pairing modes
ARG_SIGNED, ARG_UNSIGNED, ARG_STRING, ARG_CHAR, ARG_ARRAY_SIGNED, ARG_ARRAY_UNSIGNED, ARG_GOSTRING = range(7)
LABEL_ARG, LABEL_COMM, LABEL_POD, LABEL_EMPTY, LABEL_ENTRY, LABEL_NONE = range(6)
PAIR_NONE, PAIR_ENTER, PAIR_LEAVE, PAIR_LEAVE_MATCHING = range(4)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sinks:
    """What every native emitter of a pipeline writes to, by name: the slots of ``_native.EmitContext``,
    which ``context`` builds from it (the record path writes to the pipeline's own fields instead)."""

    pairing: Any  # the pairing's core (a _native.Pairing for a native context)
    counts: dict[str, int]  # records per event name
    negative: dict[str, int]  # per probe: returns that paired with an entry younger than them
    lines: Lines  # the JSON lines of the batch (the backend's), taken by the pipeline
    clock: Clock | None  # the renderer's clock; None: no JSON output
    by_thread: dict[tuple[Any, ...], bytes] | None  # the renderer's middles by thread (Renderer.by_thread)
    thread_middle: Callable[..., bytes] | None  # Renderer.thread_middle
    tgid_of: Callable[[int], int]
    comms: CommCache  # thread names by their bytes
    new_comm: Callable[[bytes], str]  # comms.new
    dumps: Callable[[Any], bytes]  # orjson.dumps
    pod_label: Callable[[int, str], str]  # a thread's k8s_* label value
    go_key: Callable[[int, int], int]  # Go: the pairing key of (thread, g) (GoroutineKeys.key)


def context(emit_context: type[EmitContext], sinks: Sinks) -> EmitContext:
    """The ``_native.EmitContext`` with ``sinks``' slots (it refuses a Python pairing or clock)."""
    return emit_context(**{f.name: getattr(sinks, f.name) for f in dataclasses.fields(sinks)})


def _arg(f: Field, length: Field | None) -> tuple[bytes, int, int, int, int, int] | None:
    """An argument as EmitPlan takes it: (b'"name":', kind, offset, element size, count, length offset)."""
    key = orjson.dumps(f.name) + b":"
    if length is not None:  # a Go string: x64 words and an s64 length (fetchargs.expand_gostring)
        if f.kind is not FieldKind.ARRAY or f.elem_size != 8 or f.signed or length.size != 8 or not length.signed:
            return None
        return key, ARG_GOSTRING, f.offset, 8, f.count, length.offset
    if f.kind is FieldKind.ARRAY:
        return key, ARG_ARRAY_SIGNED if f.signed else ARG_ARRAY_UNSIGNED, f.offset, f.elem_size, f.count, -1
    if f.kind is FieldKind.STRING:
        return key, ARG_STRING, f.offset, 4, 1, -1
    if f.kind is FieldKind.CHAR:
        return key, ARG_CHAR, f.offset, 1, 1, -1
    if f.size in (1, 2, 4, 8):
        return key, ARG_SIGNED if f.signed and f.kind is FieldKind.INT else ARG_UNSIGNED, f.offset, f.size, 1, -1
    return None


def _labels(route: Route, names: list[str]) -> tuple[tuple[tuple[int, Any], ...], ...]:
    """The label specs (source, argument index or label name) of an entry's label values, a return's
    (labels taken at the return, else the entry's) and a USDT return's wanted values, as
    ``pipeline._label_values`` and ``_wanted`` make them."""
    info, hist = route.info, route.histograms
    entry: list[tuple[int, Any]] = []
    if hist is not None and route.labels_kind == COMM_LABEL:
        entry = [(LABEL_COMM, 0)]
    elif hist is not None and route.labels_kind != NO_LABELS:
        for label in info.labels:
            entry.append((LABEL_ARG, names.index(label)) if label in names else (LABEL_COMM, 0) if label == "comm"
                         else (LABEL_POD, label) if label in POD_LABELS else (LABEL_EMPTY, 0))
    at_return = [(LABEL_ARG, names.index(x)) if x in names and x in route.labels_at_return else (LABEL_ENTRY, i)
                 for i, x in enumerate(info.labels)] if hist is not None and route.labels_at_return else []
    want = [(LABEL_ARG, names.index(x)) if x in route.match and x in names else (LABEL_NONE, 0) for x in info.labels]
    return tuple(entry), tuple(at_return), tuple(want)


def native_emitter(
    emit_plan: type[EmitPlan], plan: UnpackPlan, route: Route, ctx: EmitContext, fallback: Handler,
) -> Handler | None:
    """The native emitter of the event, which does exactly what the record path does (``fallback``, its
    handler, which it calls for anomalies); None when there is no native context or the event has a field
    C does not read."""
    fmt = plan.fmt
    fields = {f.name: f for f in (*fmt.common, *fmt.fields)}

    def offset(name: str, size: int, signed: bool = False) -> int:
        f = fields.get(name)
        if f is None:
            return -1
        return f.offset if f.size == size and f.kind is FieldKind.INT and f.signed == signed else -2

    lengths = {f.name.removeprefix(GOSTRING_LEN_PREFIX): f for f in fmt.fields
               if f.name.startswith(GOSTRING_LEN_PREFIX)}
    args = [_arg(f, lengths.get(f.name)) for f, _ in plan.args]
    ip = fields.get(PROBE_FUNC if fmt.is_retprobe else PROBE_IP)
    tid = fields.get(COMMON_PID)
    sp_ret, ret_addr, ip_delta = offset(HIDDEN_SP_RET, 8), offset(HIDDEN_RET_ADDR, 8), offset(HIDDEN_IP_DELTA, 4)
    g, g_hi = offset(HIDDEN_G, 8), offset(HIDDEN_G_HI, 8)
    sp, ret_ip = offset(HIDDEN_SP, 8), fields.get(PROBE_RET_IP)
    comm = fields.get(HIDDEN_COMM)
    if (None in args or ip is None or ip.size != 8 or tid is None or tid.size != 4
            or min(sp_ret, ret_addr, ip_delta, g, g_hi, sp) < -1 or (ret_ip is not None and ret_ip.size != 8)
            or (g < 0) != (g_hi < 0)
            or (comm is not None and comm.kind is not FieldKind.STRING)):
        return None
    entry, at_return, want = _labels(route, [f.name for f, _ in plan.args])
    pairing = (PAIR_NONE if not route.paired else PAIR_ENTER if not fmt.is_return
               else PAIR_LEAVE_MATCHING if route.match else PAIR_LEAVE)
    hist = route.histograms
    return emit_plan(
        ctx, fallback, name=fmt.name, probe=route.info.probe, info=route.info, full_name=route.info.full_name,
        series=hist.series if hist is not None else None, observe=hist.observe if hist is not None else None,
        tid_offset=tid.offset, ip_offset=ip.offset, ret_ip_offset=ret_ip.offset if ret_ip is not None else -1,
        sp_offset=sp, comm_offset=comm.offset if comm is not None else -1,
        fixed_size=struct.calcsize(plan.struct_layout), sp_ret_offset=sp_ret, ret_addr_offset=ret_addr,
        ip_delta_offset=ip_delta, g_offset=g, g_hi_offset=g_hi, args=tuple(a for a in args if a is not None),
        pairing=pairing,
        known_only=route.paired and fmt.is_return and route.entry_filtered,
        entry_labels=entry, return_labels=at_return, want=want if route.match else ())
