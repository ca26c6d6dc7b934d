"""JSON-lines sink: a bounded queue of batches written by one task through aiofiles.

Overflow policy: the reader never waits for the sink (the kernel ring buffer would overrun instead,
losing events we could not even count by probe); when the queue holds ``max_queue_bytes`` a new batch
is dropped and its records are counted in ``records_dropped``. A file is opened in append mode and reopened on SIGHUP,
so logrotate can move it away.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiofiles

from uprobe_exporter.errors import ConfigError, OutputClosed, OutputError

log = logging.getLogger(__name__)
WRITE_BYTES = 16 << 20  # what one write takes from the queue at most (but at least one batch)


class JsonlSink:
    """``open`` before anything is registered, queue batches with ``submit``, ``run`` writes them,
    ``reopen`` on SIGHUP, ``finish`` then ``close`` at the end.

    The queue is bounded in bytes (``max_queue_bytes``), which bounds memory whatever the batch sizes.
    The writer takes what is queued at each wake-up and writes it in unbuffered writes of up to
    ``write_bytes`` (so joining batches copies at most that much more)."""

    def __init__(self, path: str, max_queue_bytes: int = 32 << 20, write_bytes: int = WRITE_BYTES) -> None:
        self.path = path
        self.max_queue_bytes = max_queue_bytes
        self.write_bytes = write_bytes
        self.queue: deque[tuple[bytes, int]] = deque()
        self.queued_bytes = 0
        self.records_written = 0
        self.records_dropped = 0
        self.stuck = False  # a write() never returned: the writer thread is lost, never wait for it
        self._writing = False
        self._wake = asyncio.Event()
        self._closing = False
        self._reopen = False
        self._file: Any = None
        # Our own writer thread, not the loop's default executor: if the reader of our stdout stops
        # reading, a write() blocks forever, and asyncio.run() would wait for the default executor.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="jsonl")

    def submit(self, batch: bytes, records: int) -> None:
        if self.queue and self.queued_bytes + len(batch) > self.max_queue_bytes:  # an empty queue takes any batch
            self.records_dropped += records
            return
        self.queue.append((batch, records))
        self.queued_bytes += len(batch)
        self._wake.set()

    def reopen(self) -> None:
        self._reopen = True
        self._wake.set()

    async def _open_file(self) -> Any:
        if self.path == "-":
            return await aiofiles.open(1, "wb", buffering=0, closefd=False, executor=self._executor)
        return await aiofiles.open(self.path, "ab", buffering=0, executor=self._executor)

    async def open(self) -> None:
        try:
            self._file = await self._open_file()
        except OSError as exc:
            raise ConfigError([f"output.jsonl.path: cannot open {self.path}: {exc.strerror}"]) from exc

    async def _reopen_file(self) -> None:
        """logrotate moved the file away: continue in a new one; if that fails, keep the old one."""
        try:
            new = await self._open_file()
        except OSError as exc:
            log.error("cannot reopen JSON output %s: %s; still writing to the file it replaced", self.path,
                      exc.strerror)
            return
        old, self._file = self._file, new
        await old.close()

    async def close(self) -> None:
        if self._file is not None and not (self.stuck or self._writing):
            await self._file.close()
        self._file = None
        self._executor.shutdown(wait=False)

    async def run(self) -> None:
        """Write what is queued until ``finish`` is called and the queue is empty."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._reopen and self.path != "-":
                self._reopen = False
                await self._reopen_file()
            while self.queue:  # a few MiB per write: one syscall for many batches, a bounded copy
                data, records = self._take(self.write_bytes)
                await self._write(data, records)
            if self._closing:
                return

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

    async def _write(self, data: bytes, records: int) -> None:
        view = memoryview(data)
        self._writing = True
        try:
            while view:  # an unbuffered write may be partial (a pipe)
                written = await self._file.write(view)
                view = view[written:]
        except BrokenPipeError as exc:
            self.records_dropped += records
            raise OutputClosed(f"JSON output {self.path} was closed by its reader") from exc
        except OSError as exc:
            self.records_dropped += records
            raise OutputError(f"cannot write JSON output {self.path}: {exc.strerror}") from exc
        finally:
            self._writing = False
        self.records_written += records

    def finish(self) -> None:
        """Ask ``run`` to return once everything queued is written."""
        self._closing = True
        self._wake.set()

    def abandon(self) -> None:
        """The last write never returned: count what is still queued as dropped; never wait again."""
        self.stuck = True
        self.records_dropped += sum(n for _, n in self.queue)
        self.queue.clear()
        self.queued_bytes = 0
