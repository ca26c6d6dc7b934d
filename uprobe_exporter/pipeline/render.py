"""Pure: a ``TraceRecord`` → one JSON line (orjson). The schema is documented in README.md.

    {"time":"2026-11-25T18:11:05.123456Z","ts_ns":1795630265123456000,"probe":"readline","type":"entry",
     "event":"uprobe_exporter/readline_entry","pid":2068,"tid":2070,"comm":"bash","cpu":1,
     "ip":"0x5565748a9149","args":{"prompt":"$ "}}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from uprobe_exporter.decode.records import TraceRecord
from uprobe_exporter.processes.podlogs import PodIdentity


class Clock(Protocol):
    """What the renderer's clock holds and does: ``PyClock`` below, or its twin ``_native.Clock``."""

    wall_offset_ns: int
    sec_ns: int
    sec_text: bytes
    pid_generation: int

    def second(self, wall_ns: int) -> bytes: ...


class PyClock:
    """The renderer's clock: the wall-clock offset, the second whose text is cached, the generation of the
    process ids (``Renderer.forget_pids``). ``_native.Clock`` is its twin, which native emitters read and
    update in C."""

    __slots__ = ("pid_generation", "sec_ns", "sec_text", "wall_offset_ns")

    def __init__(self, wall_offset_ns: int = 0, *, sec_ns: int = -(10**18), sec_text: bytes = b"",
                 pid_generation: int = 0) -> None:
        self.wall_offset_ns = wall_offset_ns  # CLOCK_REALTIME − CLOCK_MONOTONIC, refreshed by the caller
        self.sec_ns = sec_ns  # the start of the second whose text is cached
        self.sec_text = sec_text
        self.pid_generation = pid_generation

    def second(self, wall_ns: int) -> bytes:
        """The time text of ``wall_ns``; its second becomes the cached one."""
        rel = wall_ns - self.sec_ns  # small ints: on the 19-digit wall_ns every division costs more
        if not 0 <= rel < 1_000_000_000:
            sec = wall_ns // 1_000_000_000
            self.sec_ns = sec * 1_000_000_000
            self.sec_text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)).encode()
            rel = wall_ns - self.sec_ns
        return b"%s%06dZ" % (self.sec_text, rel // 1000)


@dataclass(frozen=True, slots=True)
class EventInfo:  # hashable: part of the renderer's cache key
    """What the pipeline knows about one of our events, looked up by the name the kernel prints."""

    probe: str
    type: str  # "entry" or "return"
    full_name: str  # group/event
    labels: tuple[str, ...] = ()  # of the probe's latency histogram
    usdt: bool = False  # a USDT return has the site's ``ip``, not ``func``/``ret_ip``


class Renderer:
    """Renders records; ``wall_offset_ns`` = CLOCK_REALTIME − CLOCK_MONOTONIC, refreshed by the caller.

    Strategy: the fields between ``ts_ns`` and ``args`` (probe, type, event, pid, tid, comm, cpu and
    the addresses) repeat from one call of a thread to the next, so their JSON is made by orjson once
    and cached; each record then costs one small ``orjson.dumps`` (its arguments) and one bytes
    format, about half of serializing the whole object."""

    __slots__ = ("by_thread", "clock", "identity_of", "max_cached", "middles")

    def __init__(
        self, wall_offset_ns: int, max_cached: int = 1 << 16,
        identity_of: Callable[[int], PodIdentity | None] | None = None,
    ) -> None:
        # a process id → its pod (namespace, pod, container, container_id: in the middle when known)
        self.identity_of = identity_of
        # the wall-clock offset, the cached second, the generation of the process ids (forget_pids): read
        # per record by the record path and the native emitters (a raw pipeline gives it the backend's
        # clock: ``use_clock``)
        self.clock: Clock = PyClock(wall_offset_ns)
        self.max_cached = max_cached
        self.middles: dict[tuple[Any, ...], bytes] = {}
        # the raw reader's emitters: the same middles keyed without the pid, which records do not carry
        # (looked up once per thread); cleared with the tgid cache (``forget_pids``)
        self.by_thread: dict[tuple[Any, ...], bytes] = {}

    def use_clock(self, clock: Callable[[int], Clock]) -> None:
        """Keep the time in a clock made by ``clock`` (the backend's: ``_native.Clock``, which native
        emitters read and update in C, or ``PyClock``)."""
        if type(self.clock) is not clock:
            self.clock = clock(self.clock.wall_offset_ns)

    @property
    def wall_offset_ns(self) -> int:
        return self.clock.wall_offset_ns

    @wall_offset_ns.setter
    def wall_offset_ns(self, value: int) -> None:
        self.clock.wall_offset_ns = value

    def middle(self, info: EventInfo, pid: int, tid: int, comm: str, cpu: int, ip: int, ret_ip: int) -> bytes:
        """The JSON of the fields between ``ts_ns`` and ``args``, without braces; cached."""
        key = (info.full_name, pid, tid, comm, cpu, ip, ret_ip)  # a str hashes once; a dataclass per call
        middle = self.middles.get(key)
        if middle is None:
            if len(self.middles) >= self.max_cached:
                self.middles.clear()
            out: dict[str, Any] = {"probe": info.probe, "type": info.type, "event": info.full_name,
                                   "pid": pid or None, "tid": tid, "comm": comm}
            ident = self.identity_of(pid) if pid and self.identity_of is not None else None
            if ident is not None:
                for field in ("namespace", "pod", "container", "container_id"):
                    if value := getattr(ident, field):
                        out[field] = value
            out["cpu"] = cpu
            if info.type == "return" and not info.usdt:
                out["func"] = hex(ip)
                out["ret_ip"] = hex(ret_ip)
            else:
                out["ip"] = hex(ip)
            middle = self.middles[key] = orjson.dumps(out)[1:-1]
        return middle

    def thread_middle(self, info: EventInfo, pid: int, tid: int, comm: str, cpu: int, ip: int, ret_ip: int) -> bytes:
        """``middle``, also cached by everything but the pid (for the emitters' look-up)."""
        if len(self.by_thread) >= self.max_cached:
            self.by_thread.clear()
        middle = self.by_thread[info.full_name, tid, comm, cpu, ip, ret_ip] = self.middle(info, pid, tid, comm, cpu, ip,
                                                                                          ret_ip)
        return middle

    def forget_pids(self) -> None:
        """Thread ids get reused: forget which process each thread belonged to."""
        self.by_thread.clear()
        self.middles.clear()  # they hold the pid's pod too
        self.clock.pid_generation += 1  # the native emitters' own caches follow

    def render(self, rec: TraceRecord, info: EventInfo, duration_ns: int | None, pid: int) -> bytes:
        """One JSON line, with its newline."""
        clock = self.clock
        wall_ns = rec[4] + clock.wall_offset_ns  # ts_ns
        rel = wall_ns - clock.sec_ns
        middle = self.middle(info, pid, rec[1], rec[5], rec[3], rec[6], rec[7])  # tid, comm, cpu, ip, ret_ip
        if not 0 <= rel < 1_000_000_000:  # another second (or one past 63 bits, which the clock does not cache)
            head = _HEAD_AT % (clock.second(wall_ns), wall_ns, middle)
            if duration_ns is None:
                return head + orjson.dumps(rec[10]) + LINE_END
            return head + orjson.dumps(rec[10]) + DURATION_END % duration_ns
        if duration_ns is None:
            return _LINE % (clock.sec_text, rel // 1000, wall_ns, middle, orjson.dumps(rec[10]))
        return _LINE_DURATION % (clock.sec_text, rel // 1000, wall_ns, middle, orjson.dumps(rec[10]), duration_ns)


# A line is LINE_HEAD % (second text, µs, wall ns, middle), the args object, then LINE_END or DURATION_END
# (% duration_ns); native/emit.c writes the same bytes.
LINE_HEAD = b'{"time":"%s%06dZ","ts_ns":%d,%s,"args":'
_HEAD_AT = b'{"time":"%s","ts_ns":%d,%s,"args":'
LINE_END = b"}\n"
DURATION_END = b',"duration_ns":%d}\n'
_LINE = LINE_HEAD + b"%s" + LINE_END
_LINE_DURATION = LINE_HEAD + b"%s" + DURATION_END
