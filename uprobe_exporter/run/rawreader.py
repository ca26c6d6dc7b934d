"""Async reader of an instance's per-CPU ``trace_pipe_raw`` files, merged into one timestamp order.

Strategy: one O_NONBLOCK fd per CPU, so a read never blocks the event loop and cancellation is
immediate. Each ``read()`` returns one sub-buffer ("page"). When every buffer is empty we wait for
poll() on any of them, then sleep ``batch_delay`` so that a burst is read as whole pages instead of
waking per event (as ``reader.TracePipeReader`` does for text).

A thread can migrate between its entry and its return, so the CPUs' records are merged by timestamp
before pairing (decode/merge.py): a batch is read after noting the time ``now``. A CPU read until its
file said ``EAGAIN`` holds nothing committed before ``now`` any more, but for a record still being
written (``hold_ns`` covers those). A CPU whose reading stopped earlier (its page limit, or its writer
caught twice) may still hold unread records, all of them no older than the last record read of it:
so a batch releases, in order, the records up to ``now - hold_ns`` and up to the last record read of
every CPU not read to ``EAGAIN``; the rest wait for the next batch. ``trace_pipe_raw`` hands out
partial pages (the part of the writer's page committed so far, and later the rest of that page), so
a short page alone never proves that a CPU is empty (kernel/trace/ring_buffer.c:
ring_buffer_read_page copies what is unread of a page the writer is on, or was on when part of it
was read).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from uprobe_exporter.decode.merge import Merge
from uprobe_exporter.decode.rawpage import RAW_ERROR_REASONS, Located, RawDecoder
from uprobe_exporter.decode.records import LostEvents
from uprobe_exporter.errors import TracefsError, mapped_oserror
from uprobe_exporter.run.polling import read_forever, readable


class RawPipeReader:
    """Reads every CPU's ``trace_pipe_raw`` and hands each merged batch of located records, with the
    batch's lost-event markers, to ``on_records``."""

    error_reasons = RAW_ERROR_REASONS  # what the decoder counts, each exported from the start

    def __init__(
        self,
        root: Path,
        cpus: list[int],
        decoder: RawDecoder,
        merge: Merge,
        on_records: Callable[[Sequence[Located], list[LostEvents]], None],
        batch_delay: float = 0.01,
        pages_per_turn: int = 32,
        read: Callable[[int, int], bytes] = os.read,
        clock: Callable[[], int] = lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC),
    ) -> None:
        self.decoder = decoder
        self.read = read  # os.read; a test gives a simulation of the kernel's ring buffer
        self.clock = clock  # the instance's trace_clock, mono
        self.on_records = on_records
        self.batch_delay = batch_delay
        self.pages_per_turn = pages_per_turn
        self.merge = merge  # the backend's: its runs are what the decoder's walk fills
        self.page_size = decoder.layout.page_size
        self.bytes_read = 0
        self.pages_read = 0
        self.behind = False  # the last turn stopped at its page limit on some CPU: more is waiting
        self.unread_after: int | None = None  # the oldest last timestamp read of a CPU not read to EAGAIN
        self.last_read: dict[int, int] = {}  # per CPU, the timestamp of the last record read of it
        self.paths = {cpu: root / "per_cpu" / f"cpu{cpu}" / "trace_pipe_raw" for cpu in cpus}
        self.fds: dict[int, int] = {}
        for cpu, path in self.paths.items():
            try:
                self.fds[cpu] = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                self.close()
                raise mapped_oserror(exc, TracefsError, f"cannot open {path}", path=path) from exc

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def _read_cpu(self, cpu: int, fd: int, limit: int | None, lost: list[LostEvents], final: bool) -> Any:
        """One CPU's pages for this turn: until ``EAGAIN``, ``limit`` pages, or (unless ``final``) a second
        page under half full in a row; notes in ``unread_after`` what a CPU not emptied may still hold."""
        out = self.merge.new_run()
        locate = self.decoder.locate
        half_full = self.decoder.layout.half_full
        read, size = self.read, self.page_size
        n = short = 0
        emptied = False
        while True:
            if limit is not None and n >= limit:  # the rest is older than ``now``, yet to be read
                self.behind = True
                break
            try:
                page = read(fd, size)  # EINTR is retried by Python itself (PEP 475)
            except BlockingIOError:
                emptied = True
                break
            except OSError as exc:
                path = self.paths[cpu]
                raise mapped_oserror(exc, TracefsError, f"cannot read {path}", path=path) from exc
            if not page:
                emptied = True
                break
            n += 1
            self.bytes_read += len(page)
            locate(page, cpu, out, lost)
            if half_full(page):
                short = 0
            elif not final:
                # Under half full: taken from under the writer, or the rest of a page whose beginning an
                # earlier read took from under it (the writer may be pages ahead since). A second one in
                # a row caught the writer: the rest is for the next turn, read as full pages.
                short += 1
                if short == 2:
                    break
        self.pages_read += n
        last = self.merge.last_ts(out)
        if last is not None:
            self.last_read[cpu] = last
        if not emptied:  # what is unread of this CPU is no older than the last record read of it
            last = self.last_read.get(cpu, -1)
            self.unread_after = last if self.unread_after is None else min(self.unread_after, last)
        return out

    def read_available(self, limit: int | None = None, final: bool = False) -> int:
        """Read every CPU until empty (or ``limit`` pages each, or its writer caught twice); returns the
        number of pages read. ``final``: read every CPU to ``EAGAIN`` and release everything."""
        now = self.clock()
        before = self.pages_read
        self.behind, self.unread_after = False, None
        lost: list[LostEvents] = []
        runs = [self._read_cpu(cpu, fd, limit, lost, final) for cpu, fd in self.fds.items()]
        if self.unread_after is not None:  # a CPU may hold unread records: release none younger than
            now = min(now, self.unread_after + self.merge.hold_ns)  # the last record read of it
        records = self.merge.push(runs, now, final)
        if records or lost:
            self.on_records(records, lost)
        return self.pages_read - before

    async def run(self) -> None:
        """Read forever; cancel to stop (then call ``drain`` for what is left). Records held back for
        ordering are released once the hold time has passed, even if no more data comes."""
        def wait() -> Awaitable[None]:
            hold = self.merge.hold_ns / 1e9 + self.batch_delay if self.merge.waiting else None
            return readable(list(self.fds.values()), hold)

        # Reading on as soon as a turn ends would catch the writers on every turn: many pages read
        # nearly empty, each a read() of its own. So a CPU's reading stops for the turn at its second
        # page in a row under half full (its writer caught twice), a turn that caught up with every CPU
        # sleeps ``batch_delay`` (the buffers hold far more than that), and the pages read next are full.
        await read_forever(lambda: self.read_available(self.pages_per_turn), wait, self.batch_delay,
                           lambda: self.behind)

    def drain(self) -> None:
        """Read everything left and release every held record."""
        self.read_available(final=True)
