"""Pure: how the records of one event are unpacked from the page bytes, generated once per event from
its ``format`` file (as ``traceline.PayloadParser`` does for text).

A record is one ``struct`` layout unpacked by one ``unpack_from``; strings are sliced byte-exact by
their ``__data_loc`` word (``(len << 16) | offset`` from the record start, ``len`` counting the NUL, 0
when the fetch faulted); the exporter's hidden fields (plan/kernelabi.py) become the record's comm, ip,
ret_ip, pairing sp and key (decode/hidden.py). ``UnpackPlan`` is that recipe, shared by
``RecordBuilder`` (the reference: a ``TraceRecord`` per record) and the raw pipeline's emitters.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uprobe_exporter.decode.codegen import compile_function
from uprobe_exporter.decode.hidden import go_string, hidden_values, wrap_gostrings
from uprobe_exporter.decode.records import TraceRecord
from uprobe_exporter.errors import RAW_READER_FIX, FormatError
from uprobe_exporter.kernel.formatfile import EventFormat, Field, FieldKind
from uprobe_exporter.plan.kernelabi import (
    COMMON_PID,
    GOSTRING_LEN_PREFIX,
    HIDDEN_COMM,
    HIDDEN_DERIVED,
    PROBE_FUNC,
    PROBE_IP,
    PROBE_RET_IP,
)

_INT_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}


def undecodable(event: str, field: str, what: str, fix: str = RAW_READER_FIX) -> FormatError:
    """The start-up error for a field of ``event``'s format (or of ``header_page``) that the raw reader
    cannot decode: one line naming the event, the field, why, and the fix."""
    return FormatError(f"event {event}: the raw reader cannot decode field '{field}' ({what}); {fix}",
                       event=event, field=field)


def _struct_code(f: Field, event: str) -> str:
    if f.kind is FieldKind.STRING:
        if f.size != 4:  # "__data_loc char[][2]": an array of strings, a __data_loc word per element
            raise undecodable(event, f.name, f"{f.type}, {f.size} bytes: an array of strings",
                              "read each string with its own argument")
        return "I"
    if f.kind is FieldKind.ARRAY:
        code = _INT_CODES[f.elem_size]
        return f"{f.count}{code if f.signed else code.upper()}"
    if f.size not in _INT_CODES:
        raise undecodable(event, f.name, f"{f.type}, {f.size} bytes")
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
    key: str = "0"  # a Go program's g (hidden.hidden_values); "0": calls pair by thread

    @classmethod
    def of(cls, fmt: EventFormat) -> UnpackPlan:
        pid = next((f for f in fmt.common if f.name == COMMON_PID), None)
        if pid is None:
            raise undecodable(fmt.name, COMMON_PID, "missing")
        fields = sorted((pid, *fmt.fields), key=lambda f: f.offset)
        layout: list[str] = ["="]
        names: list[str] = []
        at = 0
        for f in fields:
            if f.offset < at:
                raise undecodable(fmt.name, f.name, f"at offset {f.offset}, overlapping the field before it")
            layout.append(f"{f.offset - at}x" if f.offset > at else "")
            layout.append(_struct_code(f, fmt.name))
            at = f.offset + f.size
            if f.kind is FieldKind.ARRAY:
                if not f.count:
                    raise undecodable(fmt.name, f.name, f"{f.type}[], an empty array")
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
        tid = by_name[COMMON_PID]
        ip, ret_ip, sp, key = hidden_values(hidden, by_name[PROBE_FUNC if fmt.is_retprobe else PROBE_IP],
                                            by_name.get(PROBE_RET_IP, "0"))
        return cls(fmt, "".join(layout), ", ".join(names), tid, ip, ret_ip, sp, comm, comm_code, tuple(args), key)

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
