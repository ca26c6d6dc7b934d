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


@dataclass(frozen=True, slots=True)
class EventInfo:  # hashable: part of the renderer's cache key
    """What the pipeline knows about one of our events, looked up by the name the kernel prints."""

    probe: str
    type: str  # "entry" or "return"
    full_name: str  # group/event
    labels: tuple[str, ...] = ()  # of the probe's latency histogram


class Renderer:
    """Renders records; ``wall_offset_ns`` = CLOCK_REALTIME − CLOCK_MONOTONIC, refreshed by the caller.

    Strategy: the fields between ``ts_ns`` and ``args`` (probe, type, event, pid, tid, comm, cpu and
    the addresses) repeat from one call of a thread to the next, so their JSON is made by orjson once
    and cached; each record then costs one small ``orjson.dumps`` (its arguments) and one bytes
    format, about half of serializing the whole object."""

    __slots__ = ("_middles", "_sec_ns", "_sec_text", "max_cached", "wall_offset_ns")

    def __init__(self, wall_offset_ns: int, max_cached: int = 1 << 16) -> None:
        self.wall_offset_ns = wall_offset_ns
        self.max_cached = max_cached
        self._sec_ns = -(10**18)  # the start of the second whose text is cached
        self._sec_text = b""
        self._middles: dict[tuple[Any, ...], bytes] = {}

    def iso_time(self, wall_ns: int) -> str:
        """``2026-11-25T18:11:05.123456Z``, the seconds part cached (records come in bursts)."""
        return self._time(wall_ns).decode()

    def _time(self, wall_ns: int) -> bytes:
        rel = wall_ns - self._sec_ns  # small ints: on the 19-digit wall_ns every division costs more
        if not 0 <= rel < 1_000_000_000:
            sec = wall_ns // 1_000_000_000
            self._sec_ns = sec * 1_000_000_000
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)).encode()
            rel = wall_ns - self._sec_ns
        return b"%s%06dZ" % (self._sec_text, rel // 1000)

    def _middle(self, rec: TraceRecord, info: EventInfo, pid: int) -> bytes:
        out: dict[str, Any] = {"probe": info.probe, "type": info.type, "event": info.full_name,
                               "pid": pid or None, "tid": rec.tid, "comm": rec.comm, "cpu": rec.cpu}
        if rec.is_return:
            out["func"] = hex(rec.ip)
            out["ret_ip"] = hex(rec.ret_ip)
        else:
            out["ip"] = hex(rec.ip)
        return orjson.dumps(out)[1:-1]

    def render(self, rec: TraceRecord, info: EventInfo, duration_ns: int | None, pid: int) -> bytes:
        """One JSON line, with its newline."""
        wall_ns = rec[4] + self.wall_offset_ns  # ts_ns
        rel = wall_ns - self._sec_ns
        if not 0 <= rel < 1_000_000_000:
            self._time(wall_ns)
            rel = wall_ns - self._sec_ns
        key = (info, pid, rec[1], rec[5], rec[3], rec[6], rec[7])  # tid, comm, cpu, ip, ret_ip
        middle = self._middles.get(key)
        if middle is None:
            if len(self._middles) >= self.max_cached:
                self._middles.clear()
            middle = self._middles[key] = self._middle(rec, info, pid)
        if duration_ns is None:
            return b'{"time":"%s%06dZ","ts_ns":%d,%s,"args":%s}\n' % (
                self._sec_text, rel // 1000, wall_ns, middle, orjson.dumps(rec[10]))
        return b'{"time":"%s%06dZ","ts_ns":%d,%s,"args":%s,"duration_ns":%d}\n' % (
            self._sec_text, rel // 1000, wall_ns, middle, orjson.dumps(rec[10]), duration_ns)
