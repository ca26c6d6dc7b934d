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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from uprobe_exporter.errors import TraceParseError
from uprobe_exporter.formatfile import EventFormat, Field, FieldKind
from uprobe_exporter.records import LostEvents, TraceRecord

LINE_RE = re.compile(
    r"(?P<comm>.{16})-(?P<tid>\d+) +(?:\( *(?P<tgid>\d+|-+)\) +)?\[(?P<cpu>\d+)\] (?:\S{4,5} )? *"
    r"(?P<sec>\d+)\.(?P<usec>\d{6}): (?P<event>\w+): (?P<payload>.*)\Z",
    re.S,
)
LOST_RE = re.compile(r"CPU:(\d+) \[LOST (?:(\d+) )?EVENTS\]\Z")
HIDDEN_COMM = "__comm"  # added by the exporter: comm=$comm, the thread's name when it hit the probe
HIDDEN_SP = "__sp"  # added by the exporter: %sp, to pair an entry with its return exactly
MAX_JOINED_LINES = 8  # a string argument holding newlines spans lines; rejoin at most this many
COMM_LEN = 15  # TASK_COMM_LEN - 1

_INT = r"(-?\d+|0x[0-9a-f]+)"


def decode_text(raw: str) -> str:
    """latin-1 text (one char per byte) back to str; non-UTF-8 bytes kept as ``\\xNN`` escapes."""
    if raw.isascii():
        return raw
    return raw.encode("latin-1").decode("utf-8", "backslashreplace")


def _to_int(v: str) -> int:
    return int(v, 16) if v[1:2] == "x" else int(v)


def _to_str(v: str) -> str | None:
    return None if v[0] == "(" else decode_text(v[1:-1])


def _to_array(v: str) -> list[int]:
    inner = v[1:-1]
    return [_to_int(x) for x in inner.split(",")] if inner else []


def _value_pattern(f: Field) -> tuple[str, Callable[[str], Any]]:
    if f.kind is FieldKind.STRING:
        body = f".{{0,{COMM_LEN}}}" if f.name == HIDDEN_COMM else ".*"
        return rf'("{body}"|\(fault\))', _to_str
    if f.kind is FieldKind.ARRAY:
        return r"(\{[^}]*\})", _to_array
    if f.kind is FieldKind.CHAR:  # '%c', raw and unescaped (trace_probe.c: PRINT_TYPE_FUNC_NAME(char))
        return r"'(.)'", decode_text
    return _INT, _to_int


@dataclass(frozen=True, slots=True)
class PayloadParser:
    """Matches the text after ``<event>: `` for one event, compiled from its format file."""

    fmt: EventFormat
    regex: re.Pattern[str]
    names: tuple[str, ...]
    converters: tuple[Callable[[str], Any], ...]
    comm_index: int  # index into names of __comm, or -1
    sp_index: int

    @classmethod
    def compile(cls, fmt: EventFormat) -> PayloadParser:
        # trace_uprobe.c: print_uprobe_event() prints "(0x<ret_ip> <- 0x<func>)" for returns.
        head = r"\((0x[0-9a-f]+) <- (0x[0-9a-f]+)\)" if fmt.is_return else r"\((0x[0-9a-f]+)\)"
        parts, names, convs = [head], [], []
        for f in fmt.args:
            pattern, conv = _value_pattern(f)
            parts.append(f" {re.escape(f.name)}={pattern}")
            names.append(f.name)
            convs.append(conv)
        regex = re.compile("".join(parts) + r"\Z", re.S)
        return cls(fmt, regex, tuple(names), tuple(convs),
                   names.index(HIDDEN_COMM) if HIDDEN_COMM in names else -1,
                   names.index(HIDDEN_SP) if HIDDEN_SP in names else -1)


@dataclass(slots=True)
class TextParser:
    """Parses batches of trace_pipe lines for the events of one group; keeps a rejoin carry."""

    parsers: dict[str, PayloadParser]
    pending: list[str] = field(default_factory=list)

    @classmethod
    def for_formats(cls, formats: Iterable[EventFormat]) -> TextParser:
        return cls({f.name: PayloadParser.compile(f) for f in formats})

    def parse_line(self, line: str) -> TraceRecord | LostEvents:
        """Parse one complete line (latin-1 decoded, without its newline)."""
        m = LINE_RE.match(line)
        if m is None:
            lost = LOST_RE.match(line)
            if lost is not None:
                return LostEvents(int(lost[1]), int(lost[2]) if lost[2] else None)
            raise TraceParseError("line_format", line)
        p = self.parsers.get(m["event"])
        if p is None:
            raise TraceParseError("unknown_event", line)
        pm = p.regex.match(m["payload"])
        if pm is None:
            raise TraceParseError("payload", line)
        groups = pm.groups()
        k = 2 if p.fmt.is_return else 1
        values = [conv(v) for conv, v in zip(p.converters, groups[k:], strict=True)]
        args = dict(zip(p.names, values, strict=True))
        comm = args.pop(HIDDEN_COMM) if p.comm_index >= 0 else None
        sp = args.pop(HIDDEN_SP) if p.sp_index >= 0 else 0
        if comm is None:
            comm = decode_text(m["comm"].lstrip(" "))
        tgid = m["tgid"]
        if p.fmt.is_return:
            ret_ip, ip = int(groups[0], 16), int(groups[1], 16)
        else:
            ret_ip, ip = 0, int(groups[0], 16)
        return TraceRecord(
            event=m["event"],
            tid=int(m["tid"]),
            tgid=int(tgid) if tgid and tgid[0] != "-" else 0,
            cpu=int(m["cpu"]),
            ts_ns=int(m["sec"]) * 1_000_000_000 + int(m["usec"]) * 1000,
            comm=comm,
            ip=ip,
            ret_ip=ret_ip,
            is_return=p.fmt.is_return,
            sp=sp,
            args=args,
        )

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

