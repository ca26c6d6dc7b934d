"""Pure parser of an event's ``format`` file (kernel/trace/trace_events.c: f_show()).

    name: work_entry
    ID: 2326
    format:
    \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
    ...
    \tfield:__data_loc char[] __comm;\toffset:16;\tsize:4;\tsigned:1;
    \tfield:s32 a;\toffset:28;\tsize:4;\tsigned:1;

    print fmt: "(%lx) __comm=\\"%s\\" a=%d", REC->__probe_ip, __get_str(__comm), REC->a
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace

from uprobe_exporter.errors import FormatError
from uprobe_exporter.plan.kernelabi import PROBE_FIELDS, PROBE_RET_IP

FIELD_RE = re.compile(
    r"\tfield:(?P<decl>[^;]+);\toffset:(?P<offset>\d+);\tsize:(?P<size>\d+);\tsigned:(?P<signed>-?\d+);"
)
ELEM_SIZES = {"u8": 1, "s8": 1, "char": 1, "u16": 2, "s16": 2, "u32": 4, "s32": 4, "u64": 8, "s64": 8}


class FieldKind(enum.Enum):
    INT = "int"
    CHAR = "char"  # a u8 printed as '%c' (the "char" fetch type, kernel >= 6.3)
    STRING = "string"  # __data_loc char[]: (len << 16) | offset
    ARRAY = "array"  # u32 v[] (size / element size elements)


@dataclass(frozen=True, slots=True)
class Field:
    """One field of an event record, as laid out in the ring buffer."""

    name: str
    type: str
    kind: FieldKind
    offset: int
    size: int
    signed: bool
    elem_size: int = 0  # arrays only

    @property
    def count(self) -> int:
        """Array length, from the size (the format file often prints ``[]``)."""
        return self.size // self.elem_size if self.elem_size else 1


@dataclass(frozen=True, slots=True)
class EventFormat:
    """The ``format`` file of one event: its ID, common fields, probe fields and arguments."""

    name: str
    id: int
    common: tuple[Field, ...]
    fields: tuple[Field, ...]  # everything after the blank line: __probe_* then the fetchargs
    print_fmt: str
    # a USDT return (``return_usdt``): a `p:` event that ends a call; its record has __probe_ip
    ends_call: bool = False

    @property
    def is_return(self) -> bool:
        """Its records end a call (paired with an entry): a return probe, or a USDT return."""
        return self.ends_call or self.is_retprobe

    @property
    def is_retprobe(self) -> bool:
        """A kernel return probe (`r:`): __probe_func and __probe_ret_ip instead of __probe_ip."""
        return any(f.name == PROBE_RET_IP for f in self.fields)

    @property
    def args(self) -> tuple[Field, ...]:
        """The fetchargs, in the order the kernel prints them."""
        return tuple(f for f in self.fields if f.name not in PROBE_FIELDS)


def _parse_field(m: re.Match[str], event: str) -> Field:
    decl = m["decl"].strip()
    offset, size, signed = int(m["offset"]), int(m["size"]), m["signed"] == "1"
    if decl.startswith("__data_loc "):
        name = decl.rsplit(None, 1)[1]
        return Field(name, decl[len("__data_loc "):].rsplit(None, 1)[0], FieldKind.STRING, offset, size, signed)
    type_, name = decl.rsplit(None, 1)
    if "[" in name:  # "u32 v[]" or "u32 v[4]": probe arrays, count from size (trace_events.c f_show)
        name = name[: name.index("[")]
        elem = ELEM_SIZES.get(type_.split()[-1], 0)
        if not elem or size % elem:
            raise FormatError(f"event {event}: cannot decode field '{name}' ({decl}, {size} bytes: not "
                              "a whole number of elements of a known type); give that argument a type without [N]",
                              event=event, field=name)
        return Field(name, type_, FieldKind.ARRAY, offset, size, type_.startswith("s"), elem)
    return Field(name, type_, FieldKind.INT, offset, size, signed)


def parse_format(text: str) -> EventFormat:
    """Parse the text of ``events/<group>/<event>/format``."""
    name = re.search(r"^name: (\S+)$", text, re.M)
    ident = re.search(r"^ID: (\d+)$", text, re.M)
    fmt = re.search(r"^print fmt: (.*)$", text, re.M)
    if not (name and ident and fmt):
        event = name[1] if name else "?"
        missing = ", ".join(k for k, v in (("name", name), ("ID", ident), ("print fmt", fmt)) if not v)
        raise FormatError(f"event {event}: its format file has no {missing} line: {text[:200]!r}", event=event)
    head, _, rest = text.partition("\n\n")
    common = tuple(_parse_field(m, name[1]) for m in FIELD_RE.finditer(head))
    chars = set(re.findall(r"(\w+)='%c'", fmt[1]))
    fields = tuple(
        replace(f, kind=FieldKind.CHAR) if f.kind is FieldKind.INT and f.size == 1 and f.name in chars else f
        for f in (_parse_field(m, name[1]) for m in FIELD_RE.finditer(rest)))
    return EventFormat(name[1], int(ident[1]), common, fields, fmt[1])
