"""JSON-lines sink: a bounded queue of batches written by one task through aiofiles.

Overflow policy: the reader never waits for the sink (the kernel ring buffer would overrun instead,
losing events we could not even count by probe); when the queue is full the batch is dropped and its
records are counted in ``records_dropped``. A file is opened in append mode and reopened on SIGHUP,
so logrotate can move it away.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiofiles

from uprobe_exporter.errors import OutputClosed, UprobeExporterError


class JsonlSink:
    """Queue batches with ``submit``; ``run`` writes them; ``reopen`` is called on SIGHUP."""

    def __init__(self, path: str, max_batches: int = 1024) -> None:
        self.path = path
        self.queue: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue(max_batches)
        self.records_written = 0
        self.records_dropped = 0
        self.batches_dropped = 0
        self._reopen = False
        self._file: Any = None

    def submit(self, batch: bytes, records: int) -> None:
        try:
            self.queue.put_nowait((batch, records))
        except asyncio.QueueFull:
            self.records_dropped += records
            self.batches_dropped += 1

    def reopen(self) -> None:
        self._reopen = True

    async def _open(self) -> None:
        try:
            if self.path == "-":
                self._file = await aiofiles.open(1, "wb", closefd=False)
            else:
                self._file = await aiofiles.open(self.path, "ab")
        except OSError as exc:
            raise UprobeExporterError(
                f"cannot open JSON output {self.path}: {exc.strerror}; fix output.jsonl.path") from exc

    async def _close(self) -> None:
        if self._file is not None:
            await self._file.close()
            self._file = None

    async def run(self) -> None:
        """Write batches until ``None`` is queued (see ``finish``)."""
        await self._open()
        try:
            while True:
                item = await self.queue.get()
                if item is None:
                    break
                if self._reopen and self.path != "-":
                    self._reopen = False
                    await self._close()
                    await self._open()
                batch, records = item
                try:
                    await self._file.write(batch)
                    await self._file.flush()
                except BrokenPipeError as exc:
                    self.records_dropped += records
                    self._file = None
                    raise OutputClosed(f"JSON output {self.path} was closed by its reader") from exc
                self.records_written += records
        finally:
            await self._close()

    def finish(self) -> None:
        """Ask ``run`` to stop after what is queued; never drops the end marker."""
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                _, records = self.queue.get_nowait()  # type: ignore[misc]
                self.records_dropped += records
