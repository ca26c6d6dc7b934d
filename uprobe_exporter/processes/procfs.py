"""procfs shell: which process a thread belongs to, and whether it still exists.

The tgid map the kernel prints in trace_pipe is filled at a thread's next context switch
(kernel/trace/trace.c: tracing_record_taskinfo_sched_switch()), so a line read before that shows
``(-------)``: ask ``/proc/<tid>/status`` first; if the thread has exited since, its last switch filled
the map, so read it back from tracefs ``saved_tgids``.
"""

from __future__ import annotations

import logging
import os
from array import array
from collections.abc import Mapping
from pathlib import Path

from uprobe_exporter.errors import TracefsError
from uprobe_exporter.kernel.kerneltext import parse_saved_tgids
from uprobe_exporter.kernel.tracefs import read_text

log = logging.getLogger(__name__)


def thread_exists(tid: int, proc: str = "/proc") -> bool:
    return os.path.exists(f"{proc}/{tid}")  # /proc/<tid> resolves for every thread, listed or not


def tgid_table(tgids: Mapping[int, int]) -> array[int]:
    """Thread id → process id as an array indexed by thread id (0: unknown)."""
    table = array("I", bytes(4 * (max(tgids, default=-1) + 1)))
    for tid, tgid in tgids.items():
        if tid >= 0 and 0 <= tgid < 1 << 32:
            table[tid] = tgid
    return table


class TgidCache:
    """Process id of a thread the kernel did not know; bounded, and cleared by the caller now and then
    (``clear``) so a reused thread id does not keep an old process id."""

    def __init__(self, saved_tgids: Path, proc: str = "/proc", size: int = 4096) -> None:
        self.saved_tgids = saved_tgids
        self.proc = proc
        self.size = size
        self.cache: dict[int, int] = {}
        # the last saved_tgids read, by thread id: many threads exit before their records are read
        # (short-lived processes, hundreds a second), and one read of it (30,000 lines here: 17 ms)
        # answers for all of them. An array: 4 bytes per possible thread id (pid_max), not a dict entry
        self.saved = array("I")

    def _from_proc(self, tid: int) -> int:
        try:
            with open(f"{self.proc}/{tid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Tgid:"):
                        return int(line.split()[1])
        except OSError:
            pass  # the thread has exited: ask the kernel's map instead
        return 0

    def _from_saved_tgids(self, tid: int) -> int:
        if 0 <= tid < len(self.saved) and self.saved[tid]:
            return self.saved[tid]
        try:  # not in the last read: it exited since, read again
            self.saved = tgid_table(parse_saved_tgids(read_text(self.saved_tgids)))
        except TracefsError as exc:
            log.debug("%s", exc)
            return 0
        return self.saved[tid] if 0 <= tid < len(self.saved) else 0

    def __call__(self, tid: int) -> int:
        tgid = self.cache.get(tid)
        if tgid is None:
            tgid = self._from_proc(tid) or self._from_saved_tgids(tid)
            if not tgid:
                log.debug("process id of thread %d unknown", tid)
            if len(self.cache) >= self.size:
                self.cache.clear()
            self.cache[tid] = tgid
        return tgid

    def clear(self) -> None:
        self.cache.clear()
        self.saved = array("I")
