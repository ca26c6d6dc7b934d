"""Pure: a ``TraceRecord`` → one JSON line (orjson). The schema is documented in README.md.

    {"time":"2026-11-25T18:11:05.123456Z","ts_ns":1795630265123456000,"probe":"readline","type":"entry",
     "event":"uprobe_exporter/readline_entry","pid":2068,"tid":2070,"comm":"bash","cpu":1,
     "ip":"0x5565748a9149","args":{"prompt":"$ "}}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from uprobe_exporter.records import TraceRecord

_NEWLINE = orjson.OPT_APPEND_NEWLINE


@dataclass(frozen=True, slots=True)
class EventInfo:
    """What the pipeline knows about one of our events, looked up by the name the kernel prints."""

    probe: str
    type: str  # "entry" or "return"
    full_name: str  # group/event
    labels: tuple[str, ...] = ()  # of the probe's latency histogram


class Renderer:
    """Renders records; ``wall_offset_ns`` = CLOCK_REALTIME − CLOCK_MONOTONIC, refreshed by the caller."""

    __slots__ = ("_sec", "_sec_text", "wall_offset_ns")

    def __init__(self, wall_offset_ns: int) -> None:
        self.wall_offset_ns = wall_offset_ns
        self._sec = -1
        self._sec_text = ""

    def iso_time(self, wall_ns: int) -> str:
        """``2026-11-25T18:11:05.123456Z``, the seconds part cached (records come in bursts)."""
        us = wall_ns // 1000
        sec = us // 1_000_000
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        return "%s%06dZ" % (self._sec_text, us - sec * 1_000_000)  # noqa: UP031 (faster than an f-string here)

    def to_dict(self, rec: TraceRecord, info: EventInfo, duration_ns: int | None, pid: int) -> dict[str, Any]:
        wall_ns = rec.ts_ns + self.wall_offset_ns
        out: dict[str, Any] = {
            "time": self.iso_time(wall_ns),
            "ts_ns": wall_ns,
            "probe": info.probe,
            "type": info.type,
            "event": info.full_name,
            "pid": pid or None,
            "tid": rec.tid,
            "comm": rec.comm,
            "cpu": rec.cpu,
        }
        if rec.is_return:
            out["func"] = hex(rec.ip)
            out["ret_ip"] = hex(rec.ret_ip)
        else:
            out["ip"] = hex(rec.ip)
        out["args"] = rec.args
        if duration_ns is not None:
            out["duration_ns"] = duration_ns
        return out

    def render(self, rec: TraceRecord, info: EventInfo, duration_ns: int | None, pid: int) -> bytes:
        return orjson.dumps(self.to_dict(rec, info, duration_ns, pid), option=_NEWLINE)  # one line, with \n
