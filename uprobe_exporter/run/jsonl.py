"""JSON-lines sink: a bounded queue of batches written by one thread of our own; every record counted.

Overflow policy: the reader never waits for the sink (the kernel ring buffer would overrun instead,
losing events we could not even count by probe); when the queue holds ``max_queue_bytes`` a new batch
is dropped and its records are counted in ``records_dropped``.

Accounting: every record submitted ends up in exactly one of ``records_written`` (its whole line is in
the output) or ``records_dropped``. The writer thread keeps the byte count of the write in flight exact
(``_progress``), so when a write fails, or the output stops taking data at the end, the lines already
out are counted written and the rest dropped.

Failures (strategy):
- disk full or an I/O error: the whole lines written count, a partial last line is cut off the file
  (``ftruncate``), what was in flight or queued is dropped; the sink keeps running and tries again
  every ``retry_seconds`` with what was queued meanwhile (the queue stays bounded);
- the reader of a pipe went away (``EPIPE``): the same accounting, then ``OutputClosed`` stops the
  exporter (``uprobe-exporter run | head``); anything submitted afterwards is counted dropped;
- a pipe nobody reads: a pipe or FIFO is asked to hold ``PIPE_BYTES``; writes to it never exceed the
  room left in it (``F_GETPIPE_SZ`` minus ``FIONREAD``, less two pages of slack), are cut at line ends
  and wait in ``poll()``, so no partial line is left in it and ``abandon`` at the stop counts exactly
  what got in;
- a file that cannot be reopened on SIGHUP: counted, logged, retried every ``retry_seconds``; the old
  file is written meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import select
import stat
import struct
import termios
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from uprobe_exporter.errors import ConfigError, OutputClosed, os_errors

log = logging.getLogger(__name__)
WRITE_BYTES = 16 << 20  # what one write takes from the queue at most (but at least one batch)
RETRY_SECONDS = 1.0  # after a failed write or reopen
PAGE = 4096  # a pipe holds data in pages (fs/pipe.c); writes are merged into the last one
PIPE_BYTES = 1 << 20  # what we ask a pipe to hold (fs.pipe-max-size, 1 MiB by default, allows it)
POLL_MS = 100  # how soon the writer thread notices ``abandon`` while a pipe is full


class JsonlSink:
    """``open`` before anything is registered, queue batches with ``submit``, ``run`` writes them,
    ``reopen`` on SIGHUP, ``finish`` (then ``abandon`` if it takes too long) and ``close`` at the end.

    The queue is bounded in bytes (``max_queue_bytes``), which bounds memory whatever the batch sizes.
    The writer takes what is queued at each wake-up and writes it in unbuffered writes of up to
    ``write_bytes`` (so joining batches copies at most that much more)."""

    def __init__(self, path: str, max_queue_bytes: int = 32 << 20, write_bytes: int = WRITE_BYTES,
                 retry_seconds: float = RETRY_SECONDS) -> None:
        self.path = path
        self.max_queue_bytes = max_queue_bytes
        self.write_bytes = write_bytes
        self.retry_seconds = retry_seconds
        self.queue: deque[tuple[bytes, int]] = deque()
        self.queued_bytes = 0
        self.records_written = 0
        self.records_dropped = 0
        self.write_errors = 0  # writes that failed (disk full, I/O error, the pipe's reader gone)
        self.reopen_errors = 0  # reopens on SIGHUP that failed
        self.stuck = False  # a write() never returned: the writer thread is lost, never wait for it
        self._closed = False  # nothing more is written: what is submitted is dropped
        self._closing = False
        self._abandon = False  # the writer thread stops at its next look
        self._reopen = False
        self._reopen_at = 0.0
        self._reopen_failing = False
        self._retry_at = 0.0  # no write before this (loop time) after a failed one
        self._failing = False
        self._fd = -1
        self._pipe_size = 0  # a pipe or FIFO: its capacity (writes are sized to its room); else 0
        self._inflight: tuple[bytes, int] | None = None  # the write the thread is doing
        self._writer: Future[None] | None = None  # that write on the writer thread
        self._progress = 0  # bytes of it written (set by the writer thread only)
        self._wake = asyncio.Event()
        # Our own writer thread, not the loop's default executor: if the reader of our stdout stops
        # reading, a write() may block, and asyncio.run() would wait for the default executor.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="jsonl")

    def submit(self, batch: bytes, records: int) -> None:
        if self._closed or (self.queue and self.queued_bytes + len(batch) > self.max_queue_bytes):
            self.records_dropped += records  # an empty queue takes any batch
            return
        self.queue.append((batch, records))
        self.queued_bytes += len(batch)
        self._wake.set()

    def reopen(self) -> None:
        self._reopen = True
        self._reopen_at = 0.0
        self._wake.set()

    def _open_fd(self) -> int:
        """Runs on the writer thread (opening a FIFO waits for its reader)."""
        if self.path == "-":
            return 1
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _use(self, fd: int) -> None:
        self._fd = fd
        self._pipe_size = 0
        self._pipe_writes = 0  # our writes that may still be in the pipe (since it was last seen empty)
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            with contextlib.suppress(OSError):  # fewer, larger writes; the default is 64 KiB
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            self._pipe_size = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)

    async def open(self) -> None:
        with os_errors(ConfigError, f"output.jsonl.path: cannot open {self.path}", path=self.path):
            fd = await asyncio.get_running_loop().run_in_executor(self._executor, self._open_fd)
            self._use(fd)

    async def _reopen_file(self) -> None:
        """logrotate moved the file away: continue in a new one; if that fails, count it, keep writing
        the old one and try again in ``retry_seconds``."""
        loop = asyncio.get_running_loop()
        try:
            fd = await loop.run_in_executor(self._executor, self._open_fd)
        except OSError as exc:  # a fault at run time: counted, logged and retried (errors.py), never fatal
            self.reopen_errors += 1
            self._reopen_at = loop.time() + self.retry_seconds
            log.log(logging.DEBUG if self._reopen_failing else logging.ERROR,
                    "cannot reopen JSON output %s: %s; still writing to the file it replaced, retrying every "
                    "%.0f s (uprobe_exporter_output_reopen_errors_total)", self.path, exc.strerror,
                    self.retry_seconds)
            self._reopen_failing = True
            return
        self._reopen = False
        if self._reopen_failing:
            self._reopen_failing = False
            log.info("reopened JSON output %s", self.path)
        old = self._fd
        self._use(fd)
        if old > 2:
            os.close(old)

    async def close(self) -> None:
        if self._fd > 2 and not self.stuck:
            os.close(self._fd)
        self._fd = -1
        self._executor.shutdown(wait=False)

    async def run(self) -> None:
        """Write what is queued until ``finish`` is called and the queue is empty (or ``abandon``)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = loop.time()
                due = [t - now for t in (self._retry_at if self.queue else 0.0,
                                         self._reopen_at if self._reopen else 0.0) if t > now]
                await self._wait(min(due) if due and not self._closing else None)
                if self._reopen and self.path != "-" and loop.time() >= self._reopen_at:
                    await self._reopen_file()
                while self.queue and not self._abandon and (self._closing or loop.time() >= self._retry_at):
                    data, records = self._take(self.write_bytes)  # a few MiB: one syscall for many batches
                    await self._write(data, records)
                if self._closing and (not self.queue or self._abandon):
                    return
        finally:  # also when cancelled (another task failed): a write in flight stops at its next look
            self._closed = True
            self._abandon = True
            if self._writer is not None and not self._writer.done():
                # let it look (POLL_MS), so that what it wrote meanwhile is counted written; a write()
                # blocked longer (a terminal) is given up and its lines counted dropped
                wait_futures([self._writer], timeout=2 * POLL_MS / 1000)
                self.stuck = self.stuck or not self._writer.done()
            self._settle()
            self._drop_queue()

    async def _wait(self, timeout: float | None) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    def _take(self, limit: int) -> tuple[bytes, int]:
        """The oldest queued batches, joined, up to ``limit`` bytes (at least one batch)."""
        batches: list[bytes] = []
        size = records = 0
        while self.queue and (not batches or size + len(self.queue[0][0]) <= limit):
            batch, n = self.queue.popleft()
            batches.append(batch)
            size += len(batch)
            records += n
        self.queued_bytes -= size
        return b"".join(batches), records  # one batch: itself, no copy

    def _drop_queue(self) -> None:
        self.records_dropped += sum(n for _, n in self.queue)
        self.queue.clear()
        self.queued_bytes = 0

    async def _write(self, data: bytes, records: int) -> None:
        self._inflight, self._progress = (data, records), 0
        try:
            self._writer = self._executor.submit(self._write_all, self._fd, data)
            await asyncio.wrap_future(self._writer)
        except OSError as exc:  # a closed pipe ends the output; any other fault is counted and retried
            self._settle()
            self._drop_queue()
            self.write_errors += 1
            if isinstance(exc, BrokenPipeError):
                self._closed = True
                raise OutputClosed(f"JSON output {self.path} was closed by its reader") from exc
            self._retry_at = asyncio.get_running_loop().time() + self.retry_seconds
            if not self._failing:
                log.error("cannot write JSON output %s: %s; dropping records (counted in "
                          "uprobe_exporter_records_dropped_total), trying again every %.0f s",
                          self.path, exc.strerror, self.retry_seconds)
            self._failing = True
            return
        self._settle()
        if self._failing:
            self._failing = False
            log.info("JSON output %s is written again", self.path)

    def _settle(self) -> None:
        """Count the write in flight: its whole lines out are written, the rest dropped; a partial last
        line is cut off a regular file."""
        if self._inflight is None:
            return
        (data, records), done = self._inflight, self._progress
        self._inflight = None
        if done == len(data):
            self.records_written += records
            return
        whole = data.rfind(b"\n", 0, done) + 1
        lines = data.count(b"\n", 0, whole)
        self.records_written += lines
        self.records_dropped += records - lines
        if whole < done and not self.stuck:
            self._cut(done - whole)

    def _cut(self, partial: int) -> None:
        try:
            st = os.fstat(self._fd)
            if stat.S_ISREG(st.st_mode):
                os.ftruncate(self._fd, st.st_size - partial)
                return
        except OSError as exc:  # best effort on a fault already counted: logged, never fatal
            log.error("cannot cut the partial last line (%d bytes) off JSON output %s: %s", partial, self.path,
                      exc.strerror)
            return
        log.error("JSON output %s holds a partial last line (%d bytes) that cannot be cut off a %s", self.path,
                  partial, "pipe" if self._pipe_size else "non-regular file")

    def _write_all(self, fd: int, data: bytes) -> None:
        """On the writer thread: write ``data`` (whole lines), keeping ``_progress`` exact; raises OSError.
        To a pipe, never more than its room (cut at a line end), so a write never blocks halfway."""
        view = memoryview(data)
        while self._progress < len(data) and not self._abandon:
            start, end = self._progress, len(data)
            if self._pipe_size:
                # A pipe holds whole pages: a write fills the last page only when all of its first page's
                # worth fits there (fs/pipe.c, pipe_write), so each write still in the pipe may leave up to
                # a page unused; one more page for a half-read first one.
                unread = _unread(fd)
                if not unread:
                    self._pipe_writes = 0
                room = self._pipe_size - unread - (self._pipe_writes + 2) * PAGE
                end = data.rfind(b"\n", start, start + max(room, 0)) + 1
                if end <= start:
                    if room >= self._pipe_size // 2:  # a line longer than half the pipe: it cannot be cut
                        end = data.find(b"\n", start) + 1 or len(data)
                    else:
                        _wait_writable(fd, POLL_MS)
                        continue
            try:
                self._progress += os.write(fd, view[start:end])
                self._pipe_writes += 1
            except BlockingIOError:  # someone made the file non-blocking
                _wait_writable(fd, POLL_MS)

    def finish(self) -> None:
        """Ask ``run`` to return once everything queued is written."""
        self._closing = True
        self._wake.set()

    async def abandon(self, task: asyncio.Task[None], wait: float = 0.5) -> None:
        """The output did not take the last records in time: stop writing, count the lines that got out
        as written and the rest dropped. A writer thread blocked in write() (a terminal, or a pipe another
        process fills too) is given up (``stuck``); its write in flight is counted dropped."""
        self._abandon = True
        self._wake.set()
        done, _ = await asyncio.wait([task], timeout=wait + POLL_MS / 1000)
        if not done:  # what the blocked write() itself got out is unknown: its lines count dropped
            self.stuck = True
            task.cancel()
            self._settle()
        self._closed = True
        self._drop_queue()


def _unread(fd: int) -> int:
    """Bytes in the pipe not read yet (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def _wait_writable(fd: int, ms: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.poll(ms)  # EINTR is retried (PEP 475)
