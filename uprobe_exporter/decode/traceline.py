"""Pure parser of ``trace_pipe`` text lines into ``TraceRecord``/``LostEvents``.

Strategy: text arrives as bytes and is decoded as latin-1, so one character is one byte and the
16-byte comm column (``%16s``, kernel/trace/trace_output.c: trace_print_context()) is exactly 16
characters whatever it holds. The context prefix is one regex; the payload is matched by a regex
compiled once per event from its ``format`` file, so a string argument may contain spaces, quotes,
``=`` or even a newline (lines are rejoined) and still be cut where the next known argument starts.
Strings are converted back to UTF-8 text at the end; bytes that are not UTF-8 are kept as ``\\xNN``.

    t-2267    (   2267) [001] DBZff   234.121495: rec_entry: (0x55b77de3f19d) __comm="t" __sp=0x7ffec9c5de48 n=3
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from uprobe_exporter.decode.codegen import compile_function
from uprobe_exporter.decode.hidden import go_string, hidden_values, wrap_gostrings
from uprobe_exporter.decode.records import LostEvents, TraceRecord
from uprobe_exporter.errors import TraceParseError
from uprobe_exporter.kernel.formatfile import EventFormat, Field, FieldKind
from uprobe_exporter.plan.kernelabi import COMM_LEN, GOSTRING_LEN_PREFIX, HIDDEN_COMM, HIDDEN_DERIVED, HIDDEN_SP

# The context prefix (kernel/trace/trace_output.c: trace_print_context()): comm, tid, tgid (record-tgid),
# cpu, the irq-info flags, seconds and microseconds; groups 1-6 of every line regex.
PREFIX = r"(.{16})-(\d+) +(?:\( *(\d+|-+)\) +)?\[(\d+)\] (?:\S{4,5} )? *(\d+)\.(\d{6}): "
LINE_RE = re.compile(PREFIX + r"(\w+): (.*)\Z", re.S)  # any event: 7 event, 8 payload
LOST_RE = re.compile(r"CPU:(\d+) \[LOST (?:(\d+) )?EVENTS\]\Z")
PARSE_ERROR_REASONS = ("line_format", "unknown_event", "payload", "value")  # TraceParseError.reason values
MAX_JOINED_LINES = 8  # a string argument holding newlines spans lines; rejoin at most this many


def decode_text(raw: str) -> str:
    """latin-1 text (one char per byte) back to str; non-UTF-8 bytes kept as ``\\xNN`` escapes."""
    if raw.isascii():
        return raw
    return raw.encode("latin-1").decode("utf-8", "backslashreplace")


INT_MIN, INT_END = -(1 << 63), 1 << 64  # what a 64-bit field holds (and orjson renders)


def _to_int(v: str) -> int:
    x = int(v, 16) if v.startswith(("0x", "-0x")) else int(v)
    if not INT_MIN <= x < INT_END:  # not from the kernel: a corrupted line (parse_line counts it)
        raise ValueError(v)
    return x


def _to_int64(v: str) -> int:
    """A decimal 64-bit value: 20 digits can still be more than the field holds."""
    x = int(v)
    if not INT_MIN <= x < INT_END:
        raise ValueError(v)
    return x


def _to_array(v: str) -> list[int]:
    return [_to_int(x) for x in v.split(",")] if v else []


def _text_expr(group: str) -> str:
    """A string group (None when the kernel printed ``(fault)``), UTF-8 decoded only if needed."""
    return f"({group} if {group} is None or {group}.isascii() else _decode({group}))"


def _field(f: Field, j: int) -> tuple[str, str, int]:
    """(regex, Python expression over payload groups ``g``, groups used) for one argument."""
    if f.kind is FieldKind.STRING:  # "%s" unescaped, or (fault) (trace_probe.c: PRINT_TYPE_FUNC_NAME(string))
        body = f".{{0,{COMM_LEN}}}" if f.name == HIDDEN_COMM else ".*"
        return rf'(?:"({body})"|\(fault\))', _text_expr(f"g[{j}]"), 1
    if f.kind is FieldKind.ARRAY:  # {v,v,...}
        return r"\{([^}]*)\}", f"_to_array(g[{j}])", 1
    if f.kind is FieldKind.CHAR:  # '%c', raw and unescaped (trace_probe.c: PRINT_TYPE_FUNC_NAME(char))
        return r"'(.)'", _text_expr(f"g[{j}]"), 1
    if f.name == HIDDEN_SP:  # x64: 0x%Lx
        return r"0x([0-9a-f]{1,16})", f"int(g[{j}], 16)", 1
    # %d %u print decimal, x types 0x%x: two groups, so each converts with one int() of the right base;
    # no more digits than the field's size can print (a longer number is a corrupted line, counted)
    digits, to_int = _DECIMAL_DIGITS.get(f.size, 20), "int" if f.size in _DECIMAL_DIGITS else "_to_int64"
    return (rf"(?:0x([0-9a-f]{{1,{2 * min(f.size, 8)}}})|(-?\d{{1,{digits}}}))",
            f"({to_int}(g[{j + 1}]) if g[{j}] is None else int(g[{j}], 16))", 2)


_DECIMAL_DIGITS = {1: 3, 2: 5, 4: 10}  # the most a field of that size prints with %d or %u (u32: 4294967295)


@dataclass(frozen=True, slots=True)
class PayloadParser:
    """Matches the text after ``<event>: `` for one event and builds its record.

    Both are compiled once per event from its format file: the regex, and a small generated function
    (the technique of ``collections.namedtuple``) that converts each group with one inline expression,
    because a Python call per field is most of the cost of a line."""

    fmt: EventFormat
    regex: re.Pattern[str]
    build: Callable[[re.Match[str]], TraceRecord]
    source: str

    @classmethod
    def compile(cls, fmt: EventFormat) -> PayloadParser:
        """The regex matches a whole line of this event: groups 0-5 (of ``m.groups()``) are the prefix."""
        # trace_uprobe.c: print_uprobe_event() prints "(0x<ret_ip> <- 0x<func>)" for returns.
        if fmt.is_retprobe:
            parts, j = [r"\(0x([0-9a-f]{1,16}) <- 0x([0-9a-f]{1,16})\)"], 8
            ip, ret_ip = "int(g[7], 16)", "int(g[6], 16)"
        else:
            parts, j = [r"\(0x([0-9a-f]{1,16})\)"], 7
            ip, ret_ip = "int(g[6], 16)", "0"
        comm, named, hidden, lengths = "_decode(g[0].lstrip())", [], {}, {}
        for f in fmt.args:
            pattern, expr, used = _field(f, j)
            parts.append(f" {re.escape(f.name)}={pattern}")
            if f.name == HIDDEN_COMM:
                comm = f"(g[{j}] if g[{j}] is not None and g[{j}].isascii() else _comm(g[{j}], g[0]))"
            elif f.name in HIDDEN_DERIVED:
                hidden[f.name] = expr
            elif f.name.startswith(GOSTRING_LEN_PREFIX):
                lengths[f.name.removeprefix(GOSTRING_LEN_PREFIX)] = expr
            else:
                named.append((f.name, expr))
            j += used
        args = [f"{name!r}: {expr}" for name, expr in wrap_gostrings(named, lengths)]
        ip, ret_ip, sp, key = hidden_values(hidden, ip, ret_ip)
        # tuple.__new__ directly: the NamedTuple's own __new__ is a Python function, a call per record
        source = (
            "def build(m):\n"
            "    g = m.groups()\n"
            "    tgid = g[2]\n"
            f"    return _new(TraceRecord, ({fmt.name!r}, int(g[1]), int(tgid) if tgid and tgid[0] != '-' else 0,"
            f" int(g[3]), int(g[4] + g[5]) * 1000, {comm}, {ip}, {ret_ip}, {fmt.is_return}, {sp},"
            f" {{{', '.join(args)}}}, {key}))\n"
        )
        namespace: dict[str, Any] = {"TraceRecord": TraceRecord, "_new": tuple.__new__, "_decode": decode_text,
                                     "_to_array": _to_array, "_to_int64": _to_int64, "_comm": _comm_or_column,
                                     "_gostr": go_string}
        build = compile_function(source, "build", f"payload parser {fmt.name}", namespace)
        regex = re.compile(PREFIX + re.escape(fmt.name) + ": " + "".join(parts) + r"\Z", re.S)
        return cls(fmt, regex, build, source)


def _comm_or_column(comm: str | None, column: str) -> str:
    """The ``$comm`` argument, or the comm column when the fetch faulted."""
    return decode_text(comm if comm is not None else column.lstrip())


@dataclass(slots=True)
class TextParser:
    """Parses batches of trace_pipe lines for the events of one group; keeps a rejoin carry."""

    parsers: dict[str, PayloadParser]
    pending: list[str] = field(default_factory=list)

    @classmethod
    def for_formats(cls, formats: Iterable[EventFormat]) -> TextParser:
        return cls({f.name: PayloadParser.compile(f) for f in formats})

    def add(self, fmt: EventFormat) -> None:
        """An event registered at run time."""
        self.parsers[fmt.name] = PayloadParser.compile(fmt)

    def parse_line(self, line: str) -> TraceRecord | LostEvents:
        """Parse one complete line (latin-1 decoded, without its newline)."""
        # "<prefix> 1061.676986: work_entry: (0x...": the first ": " after the comm ends the timestamp
        # (nothing before it can hold a colon), the next one ends the event name.
        end_ts = line.find(": ", 17)
        p = self.parsers.get(line[end_ts + 2:line.find(": ", end_ts + 2)])
        if p is not None:
            m = p.regex.match(line)
            if m is not None:
                try:
                    return p.build(m)
                except (ValueError, struct.error) as exc:  # a corrupted number the regex let through
                    raise TraceParseError("value", line) from exc  # ("{1,,2}", a Go string's word < 0)
        return self._diagnose(line)

    def _diagnose(self, line: str) -> LostEvents:
        """A line that is not one of our events: a lost-events marker, or a counted parse error."""
        lost = LOST_RE.match(line)
        if lost is not None:
            return LostEvents(int(lost[1]), int(lost[2]) if lost[2] else None)
        m = LINE_RE.match(line)
        if m is None:
            raise TraceParseError("line_format", line)
        if m[7] not in self.parsers:
            raise TraceParseError("unknown_event", line)
        raise TraceParseError("payload", line)

    def parse_lines(
        self, lines: list[str], final: bool = False,
    ) -> tuple[list[TraceRecord | LostEvents], list[TraceParseError]]:
        """Parse complete lines; a payload that fails may continue on the next lines (newline in a
        string), so it is retried joined with them. Unfinished joins wait for the next batch unless
        ``final``."""
        out: list[TraceRecord | LostEvents] = []
        errors: list[TraceParseError] = []
        if self.pending:
            lines = self.pending + lines
            self.pending = []
        i, n = 0, len(lines)
        while i < n:
            line = lines[i]
            try:
                out.append(self.parse_line(line))
                i += 1
                continue
            except TraceParseError as exc:
                first_error = exc
            if first_error.reason == "payload":
                j = i + 1
                joined = line
                while j < n and j - i < MAX_JOINED_LINES and not _starts_record(lines[j]):
                    joined += "\n" + lines[j]
                    j += 1
                    try:
                        out.append(self.parse_line(joined))
                        break
                    except TraceParseError:
                        continue
                else:
                    if j == n and not final and j - i < MAX_JOINED_LINES:
                        self.pending = lines[i:]
                        return out, errors
                    errors.append(first_error)
                    errors.extend(TraceParseError("line_format", x) for x in lines[i + 1:j])
                    i = j
                    continue
                i = j
                continue
            errors.append(first_error)
            i += 1
        return out, errors


def _starts_record(line: str) -> bool:
    return LINE_RE.match(line) is not None or LOST_RE.match(line) is not None

