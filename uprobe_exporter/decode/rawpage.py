"""Pure decoder of ``trace_pipe_raw`` sub-buffers ("pages") into ``TraceRecord``/``LostEvents``.

A page (kernel/trace/ring_buffer.c: struct buffer_data_page, described by ``events/header_page``) is a
u64 ``timestamp``, a ``commit`` word whose low 27 bits are the bytes of data that follow and whose bits
31/30 say events were missed before this page / their count is stored after the data, then the events.
Each event starts with a 32-bit header (``events/header_event``): ``type_len`` (5 bits) and
``time_delta`` (27 bits). type_len 1..28: a record of ``type_len * 4`` bytes follows; 0: a u32 length
(counting itself) then the record; 29: padding (delta 0: the rest of the page is empty; otherwise a
discarded event); 30: time extend; 31: absolute time stamp.

Records are unpacked by a ``struct`` layout and a small function generated once per event from its
``format`` file (as ``traceline.PayloadParser`` does for text): one ``unpack_from`` per record, strings
sliced byte-exact by their ``__data_loc`` word (``(len << 16) | offset`` from the record start, ``len``
counting the NUL, 0 when the fetch faulted).
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from uprobe_exporter.decode.codegen import compile_function
from uprobe_exporter.decode.records import LostEvents, TraceRecord
from uprobe_exporter.decode.traceline import (
    GOSTRING_LEN_PREFIX,
    HIDDEN_COMM,
    HIDDEN_DERIVED,
    go_string,
    hidden_values,
    wrap_gostrings,
)
from uprobe_exporter.errors import TraceParseError
from uprobe_exporter.kernel.formatfile import EventFormat, Field, FieldKind

try:  # the native page walk (uprobe_exporter/native/walk.c), built at install when a C compiler is there
    from uprobe_exporter import _native

    _native_locate: Callable[..., int] | None = _native.locate
except ImportError:  # then the walk in RawDecoder._events does it
    _native_locate = None

COMMIT_MASK = (1 << 27) - 1
MISSED_EVENTS = 1 << 31  # RB_MISSED_EVENTS
MISSED_STORED = 1 << 30  # RB_MISSED_STORED
TYPE_DATA_MAX, TYPE_PADDING, TYPE_TIME_EXTEND, TYPE_TIME_STAMP = 28, 29, 30, 31
TS_SHIFT = 27
TS_MSB = ~((1 << 59) - 1)  # rb_fix_abs_ts(): an absolute stamp keeps 59 bits
RAW_ERROR_REASONS = ("page_header", "event_header", "unknown_event", "record")  # reasons counted per event
_U32 = struct.Struct("=I").unpack_from
_U16 = struct.Struct("=H").unpack_from
_HEADER = struct.Struct("=IH").unpack_from  # header word + the u16 after it (common_type, if type_len > 0)
_INT_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}
_FIELD_RE = re.compile(r"\tfield: ?(?P<decl>[^;]+);\toffset:(?P<offset>\d+);\tsize:(?P<size>\d+);")


@dataclass(frozen=True, slots=True)
class PageLayout:
    """Where the page header fields are, from ``events/header_page`` (sizes differ on 32-bit hosts)."""

    timestamp: tuple[int, int]  # (offset, size)
    commit: tuple[int, int]
    data_offset: int
    page_size: int  # the sub-buffer size: header + data

    @classmethod
    def parse(cls, text: str) -> PageLayout:
        fields = {m["decl"].split()[-1]: (int(m["offset"]), int(m["size"])) for m in _FIELD_RE.finditer(text)}
        try:
            ts, commit, data = fields["timestamp"], fields["commit"], fields["data"]
        except KeyError as exc:
            raise TraceParseError("header_page", text[:200]) from exc
        if ts[1] != 8 or commit[1] not in (4, 8) or sys.byteorder != "little":
            raise TraceParseError("header_page", f"unsupported layout ({sys.byteorder}-endian): {text[:200]}")
        return cls(ts, commit, data[0], data[0] + data[1])

    def half_full(self, page: bytes) -> bool:
        """Whether the page's data fills half of it or more. A page read while the buffer holds more is
        full but for the event that did not fit; one under half full was taken from under the writer."""
        off, size = self.commit
        if len(page) < off + size:
            return False
        commit: int = struct.unpack_from("=Q" if size == 8 else "=I", page, off)[0] & COMMIT_MASK
        return commit * 2 >= self.page_size - self.data_offset


def _struct_code(f: Field) -> str:
    if f.kind is FieldKind.STRING:
        return "I"
    if f.kind is FieldKind.ARRAY:
        code = _INT_CODES[f.elem_size]
        return f"{f.count}{code if f.signed else code.upper()}"
    if f.size not in _INT_CODES:
        raise TraceParseError("format_field", f"{f.name}: size {f.size}")
    code = _INT_CODES[f.size]
    return code if f.signed and f.kind is FieldKind.INT else code.upper()


def _string_expr(loc: str) -> str:
    """A ``__data_loc`` string (None when the fetch faulted: len 0), bytes up to its NUL, UTF-8 decoded
    with non-UTF-8 bytes kept as ``\\xNN`` escapes, exactly as the text reader decodes them."""
    return (f"(p[o + ({loc} & 65535):o + ({loc} & 65535) + ({loc} >> 16) - 1]"
            f".decode('utf-8', 'backslashreplace') if {loc} >> 16 else None)")


def _value_expr(f: Field, v: str) -> str:
    """The Python expression of an argument's value, from its unpacked variable(s) ``v``."""
    if f.kind is FieldKind.STRING:
        return _string_expr(v)
    if f.kind is FieldKind.CHAR:
        return f"_char({v})"
    if f.kind is FieldKind.ARRAY:
        return f"[{v}]"
    return v


class CommCache(dict[bytes, str]):
    """Thread names by their bytes (TASK_COMM_LEN: at most 15 bytes each), decoded once: owned by whoever
    decodes a stream of records (a pipeline, a decoder), shared by its builders and native emitters."""

    max_size = 4096

    def new(self, raw: bytes) -> str:
        """A thread name the cache does not hold yet, decoded (non-UTF-8 bytes kept as ``\\xNN``) and cached."""
        if len(self) >= self.max_size:
            self.clear()
        comm = self[raw] = raw.decode("utf-8", "backslashreplace")
        return comm


@dataclass(frozen=True, slots=True)
class UnpackPlan:
    """How the generated code of one event gets its fields: one ``struct`` layout unpacked into
    variables (``unpack`` = ``v0, v1, ...``), the thread name into ``comm``, and per argument the
    expression of its value. ``RecordBuilder`` generates its code from it."""

    fmt: EventFormat
    struct_layout: str
    unpack: str  # the variables, in layout order
    tid: str  # the variable of common_pid
    ip: str  # __probe_ip (entry) or __probe_func (return)
    ret_ip: str  # "0" for an entry
    sp: str  # "0" without the exporter's __sp fetcharg
    comm: str  # an expression: "comm" once ``comm_code`` ran, or a literal
    comm_code: str  # statements (indented 4) that set ``comm`` from the page
    args: tuple[tuple[Field, str], ...]  # the configured arguments: (field, value expression)
    key: str = "0"  # a Go program's g (traceline.hidden_values); "0": calls pair by thread
    derived: bool = False  # ip, ret_ip, sp or a Go string come from hidden fields (RET sites, Go programs)

    @classmethod
    def of(cls, fmt: EventFormat) -> UnpackPlan:
        pid = next((f for f in fmt.common if f.name == "common_pid"), None)
        if pid is None:
            raise TraceParseError("format_field", f"{fmt.name}: no common_pid")
        fields = sorted((pid, *fmt.fields), key=lambda f: f.offset)
        layout: list[str] = ["="]
        names: list[str] = []
        at = 0
        for f in fields:
            if f.offset < at:
                raise TraceParseError("format_field", f"{fmt.name}: {f.name} overlaps")
            layout.append(f"{f.offset - at}x" if f.offset > at else "")
            layout.append(_struct_code(f))
            at = f.offset + f.size
            if f.kind is FieldKind.ARRAY:
                if not f.count:
                    raise TraceParseError("format_field", f"{fmt.name}: empty array {f.name}")
                names.append(", ".join(f"v{len(names)}_{i}" for i in range(f.count)))
            else:
                names.append(f"v{len(names)}")
        by_name = {f.name: names[i] for i, f in enumerate(fields)}
        comm, comm_code = "'<...>'", ""
        hidden: dict[str, str] = {}
        lengths: dict[str, str] = {}
        args = []
        for f in fmt.args:
            v = by_name[f.name]
            if f.name == HIDDEN_COMM:  # names repeat: decoded once, looked up by their bytes
                comm, comm_code = "comm", (
                    f"    if {v} >> 16:\n"
                    f"        s = o + ({v} & 65535)\n"
                    f"        raw = p[s:s + ({v} >> 16) - 1]\n"
                    f"        comm = _comms.get(raw)\n"
                    f"        if comm is None:\n"
                    f"            comm = _comm(raw)\n"
                    f"    else:\n"  # the fetch faulted
                    f"        comm = '<...>'\n")
            elif f.name in HIDDEN_DERIVED:
                hidden[f.name] = v
            elif f.name.startswith(GOSTRING_LEN_PREFIX):
                lengths[f.name.removeprefix(GOSTRING_LEN_PREFIX)] = v
            else:
                args.append((f, _value_expr(f, v)))
        if lengths:
            exprs = dict(wrap_gostrings([(f.name, e) for f, e in args], lengths))
            args = [(f, exprs[f.name]) for f, _ in args]
        tid = by_name["common_pid"]
        ip, ret_ip, sp, key = hidden_values(hidden, by_name["__probe_func" if fmt.is_retprobe else "__probe_ip"],
                                            by_name.get("__probe_ret_ip", "0"))
        return cls(fmt, "".join(layout), ", ".join(names), tid, ip, ret_ip, sp, comm, comm_code, tuple(args), key,
                   bool(set(hidden) - {"__sp"}) or bool(lengths))

    def namespace(self, comms: CommCache) -> dict[str, Any]:
        """What the generated code refers to: ``_unpack``, ``_char``, ``_comms``, ``_comm``."""
        return {"_unpack": struct.Struct(self.struct_layout).unpack_from, "_char": _char, "_comms": comms,
                "_comm": comms.new, "_gostr": go_string}


@dataclass(frozen=True, slots=True)
class RecordBuilder:
    """Builds the record of one event from the page bytes at its offset; generated from the format."""

    fmt: EventFormat
    build: Callable[[bytes, int, int, int], TraceRecord]
    source: str

    @classmethod
    def compile(cls, fmt: EventFormat, comms: CommCache | None = None) -> RecordBuilder:
        """The builder of ``fmt``'s records; thread names decoded through ``comms`` (a new cache if None)."""
        plan = UnpackPlan.of(fmt)
        args = ", ".join(f"{f.name!r}: {expr}" for f, expr in plan.args)
        source = (
            "def build(p, o, ts, cpu):\n"
            f"    {plan.unpack}, = _unpack(p, o)\n"
            f"{plan.comm_code}"
            f"    return _new(TraceRecord, ({fmt.name!r}, {plan.tid}, 0, cpu, ts, {plan.comm}, {plan.ip},"
            f" {plan.ret_ip}, {fmt.is_return}, {plan.sp}, {{{args}}}, {plan.key}))\n"
        )
        namespace = {"TraceRecord": TraceRecord, "_new": tuple.__new__,
                     **plan.namespace(comms if comms is not None else CommCache())}
        return cls(fmt, compile_function(source, "build", f"record builder {fmt.name}", namespace), source)


def _char(b: int) -> str:
    """A ``char`` argument: the text reader sees the byte printed with ``'%c'``."""
    return chr(b) if b < 0x80 else bytes((b,)).decode("utf-8", "backslashreplace")


Handler = Callable[[bytes, int, int, int], Any]  # (page, offset of the record, ts_ns, cpu) → anything
Located = tuple[int, Handler, bytes, int, int]  # (ts_ns, the event's handler, page, record offset, cpu)


@dataclass(slots=True)
class RawDecoder:
    """Walks pages of one CPU buffer for the events of one group; counts every anomaly by reason.

    ``handlers`` maps each event id to what handles its records: ``RecordBuilder.build`` (``decode``
    gives ``TraceRecord``s) or the raw pipeline's emitters, which ``locate`` puts beside each record for
    the caller to run once the CPUs' records are merged in time order."""

    layout: PageLayout
    handlers: dict[int, Handler]
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RAW_ERROR_REASONS, 0))
    native: bool = True  # walk with _native.locate where built (the walk below is its reference)
    native_layout: tuple[int, ...] = field(init=False, default=())  # the page layout as _native.locate takes it

    def __post_init__(self) -> None:
        layout = self.layout
        self.native_layout = (layout.timestamp[0], *layout.commit, layout.data_offset, layout.page_size)

    @classmethod
    def for_formats(cls, layout: PageLayout, formats: Iterable[EventFormat]) -> RawDecoder:
        comms = CommCache()
        return cls(layout, {f.id: RecordBuilder.compile(f, comms).build for f in formats})

    def decode(self, page: bytes, cpu: int, out: list[Any], lost: list[LostEvents] | None = None) -> int:
        """Append what the handlers make of the page's records to ``out`` (``TraceRecord``s from
        ``for_formats``), after a LostEvents when the kernel missed events before the page (to ``lost``
        instead, if given); returns the number of anomalies counted in ``errors``."""
        located: list[Located] = []
        anomalies = self.locate(page, cpu, located, out if lost is None else lost)
        for ts, handler, p, o, c in located:
            try:
                out.append(handler(p, o, ts, c))
            except struct.error:  # the record is shorter than its format says
                anomalies += self._error("record")
        return anomalies

    def locate(self, page: bytes, cpu: int, out: list[Located] | Any, lost: list[Any]) -> int:
        """Append ``(ts_ns, handler, page, offset, cpu)`` per record of the page to ``out`` (a list, or
        for the native walk a ``_native.Merge`` too), and a LostEvents to ``lost`` when the kernel missed
        events before the page; returns the anomalies. A timestamp past 64 bits, which only a corrupt
        page has, ends the walk as a bad event header."""
        layout = self.layout
        if _native_locate is not None and self.native:
            return _native_locate(page, cpu, out, lost, self.handlers, self.native_layout, self.errors, LostEvents)
        c_off, c_size = layout.commit
        start = layout.data_offset
        if len(page) < start:
            return self._error("page_header") if page else 0
        ts = struct.unpack_from("=Q", page, layout.timestamp[0])[0]
        commit = struct.unpack_from("=Q" if c_size == 8 else "=I", page, c_off)[0]
        end = start + (commit & COMMIT_MASK)
        if end > len(page) or end > layout.page_size:
            return self._error("page_header")
        if commit & MISSED_EVENTS:
            count = None
            if commit & MISSED_STORED and end + c_size <= len(page):
                count = struct.unpack_from("=Q" if c_size == 8 else "=I", page, end)[0]
            lost.append(LostEvents(cpu, count))
        return self._events(page, start, end, ts, cpu, out)

    def _events(self, page: bytes, pos: int, end: int, ts: int, cpu: int, out: list[Located]) -> int:
        handlers = self.handlers
        append = out.append
        header = _HEADER
        anomalies = 0
        last = end - 8  # up to here a header and the u32 after it are inside the data
        while pos < end:
            if pos > last:
                w = _U32(page, pos)[0] if pos + 4 <= end else TYPE_TIME_STAMP
                if w & 31 == TYPE_PADDING and not w >> 5:
                    break  # the rest of the page is empty
                if w & 31 == 0 or w & 31 > TYPE_DATA_MAX or pos + 4 + (w & 31) * 4 > end:
                    return anomalies + self._error("event_header")
            w, event_id = header(page, pos)  # the header word, and the common_type of a small record
            type_len = w & 31
            if type_len <= TYPE_DATA_MAX:
                ts += w >> 5
                if ts >> 64:
                    return anomalies + self._error("event_header")
                if type_len:
                    data = pos + 4
                    pos = data + type_len * 4
                else:
                    data = pos + 8
                    pos += 4 + _U32(page, pos + 4)[0]
                    if pos < data + 4 or pos > end:
                        return anomalies + self._error("event_header")
                    event_id = _U16(page, data)[0]
                handler = handlers.get(event_id)
                if handler is None:
                    anomalies += self._error("unknown_event")
                    continue
                append((ts, handler, page, data, cpu))
            elif type_len == TYPE_TIME_EXTEND:
                ts += (_U32(page, pos + 4)[0] << TS_SHIFT) + (w >> 5)
                if ts >> 64:
                    return anomalies + self._error("event_header")
                pos += 8
            elif type_len == TYPE_PADDING:
                if not w >> 5:
                    break  # the rest of the page is empty
                pos += 4 + _U32(page, pos + 4)[0]  # a discarded event
            else:  # TYPE_TIME_STAMP
                stamp = (_U32(page, pos + 4)[0] << TS_SHIFT) | (w >> 5)
                ts = stamp | (ts & TS_MSB) if not stamp & TS_MSB else stamp
                pos += 8
        return anomalies

    def _error(self, reason: str) -> int:
        self.errors[reason] += 1
        return 1
