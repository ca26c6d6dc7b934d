"""Pure decoder of ``trace_pipe_raw`` sub-buffers ("pages") into located records and ``LostEvents``.

A page (kernel/trace/ring_buffer.c: struct buffer_data_page, described by ``events/header_page``) is a
u64 ``timestamp``, a ``commit`` word whose low 27 bits are the bytes of data that follow and whose bits
31/30 say events were missed before this page / their count is stored after the data, then the events.
Each event starts with a 32-bit header (``events/header_event``): ``type_len`` (5 bits) and
``time_delta`` (27 bits). type_len 1..28: a record of ``type_len * 4`` bytes follows; 0: a u32 length
(counting itself) then the record; 29: padding (delta 0: the rest of the page is empty; otherwise a
discarded event); 30: time extend; 31: absolute time stamp.

The walk (``walk``, the reference; its native twin ``_native.locate``, chosen in backend.py) puts each
record beside its event's handler, which unpacks it (``unpack.RecordBuilder``: a ``TraceRecord``) or
emits it (the raw pipeline's emitters) once the CPUs' records are merged in time order.
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from uprobe_exporter.decode.records import LostEvents
from uprobe_exporter.decode.unpack import CommCache, RecordBuilder, undecodable
from uprobe_exporter.kernel.formatfile import EventFormat

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
            raise undecodable("header_page", exc.args[0], "missing from events/header_page") from exc
        if ts[1] != 8 or commit[1] not in (4, 8) or sys.byteorder != "little":
            raise undecodable("header_page", "commit", f"{commit[1]} bytes, timestamp {ts[1]} bytes, on a "
                              f"{sys.byteorder}-endian host")
        return cls(ts, commit, data[0], data[0] + data[1])

    def half_full(self, page: bytes) -> bool:
        """Whether the page's data fills half of it or more. A page read while the buffer holds more is
        full but for the event that did not fit; one under half full was taken from under the writer."""
        off, size = self.commit
        if len(page) < off + size:
            return False
        commit: int = struct.unpack_from("=Q" if size == 8 else "=I", page, off)[0] & COMMIT_MASK
        return commit * 2 >= self.page_size - self.data_offset


Handler = Callable[[bytes, int, int, int], Any]  # (page, offset of the record, ts_ns, cpu) → anything
Located = tuple[int, Handler, bytes, int, int]  # (ts_ns, the event's handler, page, record offset, cpu)


WalkLayout = tuple[int, int, int, int, int]  # timestamp offset, commit offset and size, data offset, page size


class Walk(Protocol):
    """The page walk: ``walk`` below, or its native twin ``_native.locate`` (the same arguments and
    results; the native one also appends to a ``_native.Merge``)."""

    def __call__(self, page: bytes, cpu: int, out: list[Located], lost: list[LostEvents], handlers: dict[int, Handler],
                 layout: WalkLayout, errors: dict[str, int], lost_type: type[LostEvents], /) -> int: ...


@dataclass(slots=True)
class RawDecoder:
    """Walks pages of one CPU buffer for the events of one group; counts every anomaly by reason.

    ``handlers`` maps each event id to what handles its records: ``RecordBuilder.build`` (``decode``
    gives ``TraceRecord``s) or the raw pipeline's emitters, which ``locate`` puts beside each record for
    the caller to run once the CPUs' records are merged in time order. ``walk`` is the page walk of the
    backend (backend.py): this module's ``walk`` or its native twin."""

    layout: PageLayout
    handlers: dict[int, Handler]
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RAW_ERROR_REASONS, 0))
    walk: Walk = field(default_factory=lambda: walk)
    walk_layout: WalkLayout = field(init=False, default=(0, 0, 0, 0, 0))  # the page layout as ``walk`` takes it

    def __post_init__(self) -> None:
        layout = self.layout
        self.walk_layout = (layout.timestamp[0], *layout.commit, layout.data_offset, layout.page_size)

    @classmethod
    def for_formats(cls, layout: PageLayout, formats: Iterable[EventFormat], walk: Walk | None = None) -> RawDecoder:
        """The record path's decoder: ``decode`` gives the ``TraceRecord`` of every record."""
        comms = CommCache()
        handlers: dict[int, Handler] = {f.id: RecordBuilder.compile(f, comms).build for f in formats}
        return cls(layout, handlers) if walk is None else cls(layout, handlers, walk=walk)

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
                anomalies += _count(self.errors, "record")
        return anomalies

    def locate(self, page: bytes, cpu: int, out: list[Located], lost: list[LostEvents]) -> int:
        """Append ``(ts_ns, handler, page, offset, cpu)`` per record of the page to ``out`` (a run of the
        backend's merge), and a LostEvents to ``lost`` when the kernel missed events before the page;
        returns the anomalies."""
        return self.walk(page, cpu, out, lost, self.handlers, self.walk_layout, self.errors, LostEvents)


def walk(page: bytes, cpu: int, out: list[Located], lost: list[LostEvents], handlers: dict[int, Handler],
         layout: WalkLayout, errors: dict[str, int], lost_type: type[LostEvents]) -> int:
    """The reference page walk (``Walk``). A timestamp past 64 bits, which only a corrupt page has, ends
    the walk as a bad event header."""
    ts_off, c_off, c_size, start, page_size = layout
    if len(page) < start:
        return _count(errors, "page_header") if page else 0
    ts = struct.unpack_from("=Q", page, ts_off)[0]
    commit = struct.unpack_from("=Q" if c_size == 8 else "=I", page, c_off)[0]
    end = start + (commit & COMMIT_MASK)
    if end > len(page) or end > page_size:
        return _count(errors, "page_header")
    if commit & MISSED_EVENTS:
        count = None
        if commit & MISSED_STORED and end + c_size <= len(page):
            count = struct.unpack_from("=Q" if c_size == 8 else "=I", page, end)[0]
        lost.append(lost_type(cpu, count))
    return _events(page, start, end, ts, cpu, out, handlers, errors)


def _events(page: bytes, pos: int, end: int, ts: int, cpu: int, out: list[Located], handlers: dict[int, Handler],
            errors: dict[str, int]) -> int:
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
                return anomalies + _count(errors, "event_header")
        w, event_id = header(page, pos)  # the header word, and the common_type of a small record
        type_len = w & 31
        if type_len <= TYPE_DATA_MAX:
            ts += w >> 5
            if ts >> 64:
                return anomalies + _count(errors, "event_header")
            if type_len:
                data = pos + 4
                pos = data + type_len * 4
            else:
                data = pos + 8
                pos += 4 + _U32(page, pos + 4)[0]
                if pos < data + 4 or pos > end:
                    return anomalies + _count(errors, "event_header")
                event_id = _U16(page, data)[0]
            handler = handlers.get(event_id)
            if handler is None:
                anomalies += _count(errors, "unknown_event")
                continue
            append((ts, handler, page, data, cpu))
        elif type_len == TYPE_TIME_EXTEND:
            ts += (_U32(page, pos + 4)[0] << TS_SHIFT) + (w >> 5)
            if ts >> 64:
                return anomalies + _count(errors, "event_header")
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


def _count(errors: dict[str, int], reason: str) -> int:
    errors[reason] += 1
    return 1
