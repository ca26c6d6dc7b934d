"""procfs shell: which process a thread belongs to, and whether it still exists.

The tgid map the kernel prints in trace_pipe is filled at a thread's next context switch
(kernel/trace/trace.c: tracing_record_taskinfo_sched_switch()), so a line read before that shows
``(-------)``: ask ``/proc/<tid>/status`` first; if the thread has exited since, its last switch filled
the map, so read it back from tracefs ``saved_tgids``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from uprobe_exporter.errors import TracefsError
from uprobe_exporter.kerneltext import parse_saved_tgids
from uprobe_exporter.tracefs import read_text

log = logging.getLogger(__name__)


def thread_exists(tid: int, proc: str = "/proc") -> bool:
    return os.path.exists(f"{proc}/{tid}")  # /proc/<tid> resolves for every thread, listed or not


class TgidCache:
    """Process id of a thread the kernel did not know; bounded, and cleared by the caller now and then
    (``clear``) so a reused thread id does not keep an old process id."""

    def __init__(self, saved_tgids: Path, proc: str = "/proc", size: int = 4096) -> None:
        self.saved_tgids = saved_tgids
        self.proc = proc
        self.size = size
        self.cache: dict[int, int] = {}
        # the last saved_tgids read: many threads exit before their records are read (short-lived processes,
        # hundreds a second), and one read of it (30,000 lines here: 17 ms) answers for all of them
        self.saved: dict[int, int] = {}

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
        tgid = self.saved.get(tid)
        if tgid:
            return tgid
        try:  # not in the last read: it exited since, read again
            self.saved = parse_saved_tgids(read_text(self.saved_tgids))
        except TracefsError as exc:
            log.debug("%s", exc)
            return 0
        return self.saved.get(tid, 0)

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
        self.saved = {}
