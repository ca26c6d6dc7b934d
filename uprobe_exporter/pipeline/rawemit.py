"""Pure: the raw reader's per-event emitters, generated once per event from its ``format`` file.

An emitter does for one record, straight from the page bytes, what ``Pipeline`` does for a
``TraceRecord``: count it, pair an entry with its return, put the call's duration in the latency
histogram and render the JSON line. Strategy: no record object and no args dict are built; the args'
JSON is laid out by a template made once per event, in which integers go through ``%d`` and every
other value (strings, arrays, chars, ``null``) through ``orjson.dumps`` — the same bytes as
``orjson.dumps(args)`` (the equivalence tests compare both paths). One generated function replaces the
builder → pipeline → renderer chain of calls per record: about a third of the instructions.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from uprobe_exporter.decode.codegen import compile_function
from uprobe_exporter.decode.rawpage import Handler
from uprobe_exporter.decode.unpack import COMMS, UnpackPlan, new_comm
from uprobe_exporter.kernel.formatfile import FieldKind
from uprobe_exporter.pipeline.histogram import ANY_LABELS, COMM_LABEL, NO_LABELS, ProbeHistograms
from uprobe_exporter.pipeline.lines import Lines
from uprobe_exporter.pipeline.pairing import GoroutineKeys, Pairing
from uprobe_exporter.pipeline.render import DURATION_END, LINE_END, LINE_HEAD, EventInfo, Renderer
from uprobe_exporter.plan.config import POD_LABELS
from uprobe_exporter.plan.kernelabi import COMMON_PID, HIDDEN_COMM, HIDDEN_SP, PROBE_FUNC, PROBE_IP, PROBE_RET_IP

ARG_SIGNED, ARG_UNSIGNED, ARG_STRING, ARG_CHAR, ARG_ARRAY_SIGNED, ARG_ARRAY_UNSIGNED = range(6)  # _native.c
PAIR_NONE, PAIR_ENTER, PAIR_ENTER_COMM, PAIR_LEAVE, PAIR_LEAVE_KNOWN = range(5)  # _native.c


class Route(NamedTuple):
    """What the pipeline does with one event's records (a tuple: the text path unpacks it per record)."""

    info: EventInfo
    paired: bool  # its probe has a return probe: entries and returns are paired
    histograms: ProbeHistograms | None  # its probe's latency histograms
    labels_at_return: frozenset[str]  # histogram labels from the return's own arguments (not also in args)
    labels_kind: str  # NO_LABELS, COMM_LABEL or ANY_LABELS: what an entry keeps for its return
    entry_filtered: bool  # its probe's entry has a kernel filter: a return without its entry is not emitted
    # USDT: labels in both args and return_args; a return closes the innermost entry only if they agree
    match: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Sinks:
    """What every emitter of a pipeline writes to."""

    counts: dict[str, int]  # records per event name
    pairing: Pairing
    renderer: Renderer | None  # None: no JSON output
    tgid_of: Callable[[int], int]
    lines: Lines  # the JSON lines of the batch (the backend's), taken by the pipeline
    negative: dict[str, int]  # per probe: returns that paired with an entry younger than them
    go_keys: GoroutineKeys | None = None  # Go: pairing keys per (process, g)
    pod_label: Callable[[int, str], str] = lambda tid, label: ""  # a thread's k8s_* label value


def args_template(plan: UnpackPlan, values: list[str]) -> tuple[bytes, str]:
    """The args object as a bytes ``%`` template, and the expressions that fill it (from ``values``,
    the variables holding each argument's value)."""
    parts, fill = [], []
    for (f, _), v in zip(plan.args, values, strict=True):
        integer = f.kind is FieldKind.INT
        parts.append(orjson.dumps(f.name).replace(b"%", b"%%") + (b":%d" if integer else b":%s"))
        fill.append(v if integer else f"_dumps({v})")
    return b"{" + b",".join(parts) + b"}", "".join(f", {x}" for x in fill)


def _label_tuple(
    plan: UnpackPlan, labels: tuple[str, ...], values: list[str], entry: str | None,
    at_return: frozenset[str] = frozenset(),
) -> str:
    """The label values as ``pipeline._label_values`` takes them: an argument of this event, else the
    entry's value (``entry``: the frame's tuple), else comm for "comm" and "" for the rest."""
    names = [f.name for f, _ in plan.args]
    items = []
    for i, label in enumerate(labels):
        if label in names and (entry is None or label in at_return):
            items.append(f"str({values[names.index(label)]})")
        elif entry is not None:
            items.append(f"{entry}[{i}]")
        else:
            items.append(plan.comm if label == "comm" else
                         f"_pod_label({plan.tid}, {label!r})" if label in POD_LABELS else "''")
    return f"({', '.join(items)},)"


def _wanted(plan: UnpackPlan, labels: tuple[str, ...], values: list[str], match: frozenset[str]) -> str:
    """The tuple ``pipeline._wanted`` makes: this return's values of the labels in ``match``, else None."""
    names = [f.name for f, _ in plan.args]
    items = [f"str({values[names.index(x)]})" if x in match and x in names else "None" for x in labels]
    return f"({', '.join(items)},)"


def compile_emitter(plan: UnpackPlan, route: Route, sinks: Sinks) -> tuple[Handler, str]:
    """The emitter of one event (``plan.fmt``), ``emit(page, offset, ts_ns, cpu)``, and its source."""
    fmt = plan.fmt
    info = route.info
    values = [f"a{i}" for i in range(len(plan.args))]
    hist, render = route.histograms, sinks.renderer is not None
    labels_use_args = hist is not None and any(f.name in info.labels for f, _ in plan.args)
    lines = ["def emit(p, o, ts, cpu):", f"    {plan.unpack}, = _unpack(p, o)"]
    lines += plan.comm_code.rstrip("\n").split("\n") if plan.comm_code else []
    if render or labels_use_args:
        lines += [f"    {v} = {expr}" for v, (_, expr) in zip(values, plan.args, strict=True)]
    count = f"    _counts[{fmt.name!r}] += 1"
    known_only = route.paired and fmt.is_return and route.entry_filtered
    if not known_only:
        lines.append(count)
    duration = False
    # the thread, or a Go program's goroutine in its process (pairing.GoroutineKeys)
    pair_by = plan.tid if plan.key == "0" else f"_gokey({plan.tid}, {plan.key})"
    if route.paired and not fmt.is_return:
        extra = ("()" if hist is None or route.labels_kind not in (COMM_LABEL, ANY_LABELS) else
                 f"({plan.comm},)" if route.labels_kind == COMM_LABEL else
                 _label_tuple(plan, info.labels, values, None))
        lines.append(f"    _enter({info.probe!r}, {pair_by}, {plan.sp}, ts, {extra})")
    elif route.paired:
        duration = True
        leave = (f"_leave({info.probe!r}, {pair_by}, {plan.sp})" if not route.match else
                 f"_leave_matching({info.probe!r}, {plan.tid}, {_wanted(plan, info.labels, values, route.match)})")
        lines += ["    duration = None",
                  f"    frame = {leave}"]
        if known_only:  # its entry was filtered (the pairing counted it): not emitted, not counted here
            lines += ["    if frame is None:", "        return", count]
        lines += ["    if frame is not None:",
                  "        duration = ts - frame[1]",
                  "        if duration < 0:  # only records out of order can do this: counted, not observed",
                  f"            _negative[{info.probe!r}] += 1",
                  "            duration = None"]
        if hist is not None:
            labels = (_label_tuple(plan, info.labels, values, "frame[2]", route.labels_at_return)
                      if route.labels_at_return else "frame[2]")
            lines += ["        else:", f"            _observe({labels}, duration)"]
    if render:
        template, fill = args_template(plan, values)
        head = f"(clock[2], rel // 1000, wall, middle{fill}"  # Renderer.clock: wall offset, sec_ns, sec_text
        fields = f"{plan.tid}, {plan.comm}, cpu, {plan.ip}, {plan.ret_ip}"  # Renderer.middle's, after info and pid
        lines += [
            "    clock = _clock",
            "    wall = ts + clock[0]",
            "    rel = wall - clock[1]",
            "    if not 0 <= rel < 1000000000:",
            "        _renderer.second(wall)",
            "        rel = wall - clock[1]",
            f"    middle = _by_thread.get(({info.full_name!r}, {fields}))",
            "    if middle is None:",
            f"        middle = _renderer.thread_middle(_info, _tgid_of({plan.tid}), {fields})",
        ]
        line, with_duration = LINE_HEAD + template + LINE_END, LINE_HEAD + template + DURATION_END
        if duration:
            lines += ["    if duration is None:",
                      f"        _append({line!r} % {head}))",
                      "    else:",
                      f"        _append({with_duration!r} % {head}, duration))"]
        else:
            lines.append(f"    _append({line!r} % {head}))")
    source = "\n".join(lines) + "\n"
    renderer = sinks.renderer
    namespace: dict[str, Any] = {
        **plan.namespace(), "_counts": sinks.counts, "_enter": sinks.pairing.enter, "_leave": sinks.pairing.leave,
        "_leave_matching": sinks.pairing.leave_matching,
        "_observe": hist.observe if hist is not None else None, "_renderer": renderer, "_info": info,
        "_clock": renderer.clock if renderer is not None else None,
        "_by_thread": renderer.by_thread if renderer is not None else None, "_tgid_of": sinks.tgid_of,
        "_append": sinks.lines.append, "_dumps": orjson.dumps, "_negative": sinks.negative,
        "_gokey": sinks.go_keys.key if sinks.go_keys is not None else None, "_pod_label": sinks.pod_label,
    }
    return compile_function(source, "emit", f"emitter {fmt.name}", namespace), source


def native_emitter(emit_plan: Callable[..., Handler], plan: UnpackPlan, route: Route, sinks: Sinks,
                   emitter: Handler) -> Handler | None:
    """The native emitter of the event (``emit_plan``: the backend's ``_native.EmitPlan``), which does
    exactly what ``emitter`` (its Python emitter) does and hands it what it does not cover; None when the
    event has what only the Python emitter handles: histogram labels taken from arguments; returns seen
    at RET instructions and Go programs' events (their ip, sp and pairing key are computed from hidden
    fields)."""
    if plan.derived:
        return None
    fmt = plan.fmt
    fields = {f.name: f for f in (*fmt.common, *fmt.fields)}

    def offset(name: str, size: int) -> int:
        f = fields.get(name)
        return f.offset if f is not None and f.size == size else -1

    args = []
    for f, _ in plan.args:
        key = orjson.dumps(f.name) + b":"
        if f.kind is FieldKind.ARRAY:
            args.append((key, ARG_ARRAY_SIGNED if f.signed else ARG_ARRAY_UNSIGNED, f.offset, f.elem_size, f.count))
        elif f.kind is FieldKind.STRING:
            args.append((key, ARG_STRING, f.offset, 4, 1))
        elif f.kind is FieldKind.CHAR:
            args.append((key, ARG_CHAR, f.offset, 1, 1))
        elif f.size in (1, 2, 4, 8):
            args.append((key, ARG_SIGNED if f.signed else ARG_UNSIGNED, f.offset, f.size, 1))
        else:
            return None
    hist = route.histograms
    if not route.paired:
        pairing = PAIR_NONE
    elif fmt.is_return:
        if (hist is not None and route.labels_at_return) or route.match:
            return None
        pairing = PAIR_LEAVE_KNOWN if route.entry_filtered else PAIR_LEAVE
    elif hist is None or route.labels_kind == NO_LABELS:
        pairing = PAIR_ENTER
    elif route.labels_kind == COMM_LABEL:
        pairing = PAIR_ENTER_COMM
    else:
        return None
    ip = offset(PROBE_FUNC if fmt.is_retprobe else PROBE_IP, 8)
    tid = offset(COMMON_PID, 4)
    if ip < 0 or tid < 0:
        return None
    comm = fields.get(HIDDEN_COMM)
    layout = (tid, ip, offset(PROBE_RET_IP, 8), offset(HIDDEN_SP, 8),
              comm.offset if comm is not None and comm.kind is FieldKind.STRING else -1,
              struct.calcsize(plan.struct_layout))
    r = sinks.renderer
    return emit_plan(emitter, fmt.name, route.info.probe, layout, tuple(args), pairing, (
        sinks.pairing.enter, sinks.pairing.leave, hist, sinks.counts, r, route.info, route.info.full_name,
        sinks.tgid_of, r.by_thread if r is not None else {}, r.clock if r is not None else [0, 0, b"", 0],
        sinks.lines, COMMS, new_comm, orjson.dumps, sinks.negative))
