"""JSON-lines sink: a bounded queue of batches written by one task through aiofiles.

Overflow policy: the reader never waits for the sink (the kernel ring buffer would overrun instead,
losing events we could not even count by probe); when the queue holds ``max_queue_bytes`` a new batch
is dropped and its records are counted in ``records_dropped``. A file is opened in append mode and reopened on SIGHUP,
so logrotate can move it away.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiofiles

from uprobe_exporter.errors import OutputClosed, UprobeExporterError


class JsonlSink:
    """Queue batches with ``submit``; ``run`` writes them; ``reopen`` is called on SIGHUP.

    The queue is bounded in bytes (``max_queue_bytes``), which bounds memory whatever the batch sizes.
    The writer takes everything queued at each wake-up and writes it with one unbuffered write."""

    def __init__(self, path: str, max_queue_bytes: int = 32 << 20) -> None:
        self.path = path
        self.max_queue_bytes = max_queue_bytes
        self.queue: deque[tuple[bytes, int]] = deque()
        self.queued_bytes = 0
        self.records_written = 0
        self.records_dropped = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._reopen = False
        self._writing = False
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

    async def _open(self) -> None:
        try:
            if self.path == "-":
                self._file = await aiofiles.open(1, "wb", buffering=0, closefd=False, executor=self._executor)
            else:
                self._file = await aiofiles.open(self.path, "ab", buffering=0, executor=self._executor)
        except OSError as exc:
            raise UprobeExporterError(
                f"cannot open JSON output {self.path}: {exc.strerror}; fix output.jsonl.path") from exc

    async def _close(self) -> None:
        if self._file is not None:
            await self._file.close()
            self._file = None

    async def run(self) -> None:
        """Write what is queued until ``finish`` is called and the queue is empty."""
        await self._open()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._reopen and self.path != "-":
                    self._reopen = False
                    await self._close()
                    await self._open()
                while self.queue:
                    batches = list(self.queue)
                    self.queue.clear()
                    self.queued_bytes = 0
                    await self._write(b"".join(b for b, _ in batches), sum(n for _, n in batches))
                if self._closing:
                    return
        finally:
            if not self._writing:  # else the writer thread is stuck in write(): closing would wait for it
                await self._close()
            self._executor.shutdown(wait=False)

    async def _write(self, data: bytes, records: int) -> None:
        view = memoryview(data)
        self._writing = True
        try:
            while view:  # an unbuffered write may be partial (a pipe)
                written = await self._file.write(view)
                view = view[written:]
            self._writing = False
        except BrokenPipeError as exc:
            self._writing = False
            self.records_dropped += records
            self._file = None
            raise OutputClosed(f"JSON output {self.path} was closed by its reader") from exc
        self.records_written += records

    def finish(self) -> None:
        """Ask ``run`` to return once everything queued is written."""
        self._closing = True
        self._wake.set()
