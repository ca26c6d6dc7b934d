"""Async reader of an instance's ``trace_pipe``: non-blocking reads, woken by poll, batched.

Strategy: the fd is opened O_NONBLOCK, so a read never blocks the event loop and cancellation is
immediate. When the pipe is empty we wait for poll() to report data (``buffer_percent`` is 0 in our
instance), then sleep ``batch_delay`` so that a burst is read in a few large reads instead of one
wake-up per event (a reader that wakes per event slows the traced program down: kernel/trace/trace.c
wakes waiters from irq_work on each commit). One ``read()`` of trace_pipe returns at most about one
page of text (TRACE_SEQ_BUFFER_SIZE), so a backlog is drained with many reads, yielding to the loop
every ``reads_per_turn`` reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from uprobe_exporter.decode.traceline import PARSE_ERROR_REASONS
from uprobe_exporter.errors import TracefsError, mapped_oserror
from uprobe_exporter.run.polling import read_forever, readable


class LineSplitter:
    """Bytes in, complete lines out (latin-1 decoded); keeps the partial last line."""

    __slots__ = ("_carry",)

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> list[str]:
        data = self._carry + data if self._carry else data
        cut = data.rfind(b"\n")
        if cut < 0:
            self._carry = data
            return []
        self._carry = data[cut + 1:]
        return data[:cut].decode("latin-1").split("\n")

    def flush(self) -> list[str]:
        rest, self._carry = self._carry, b""
        return [rest.decode("latin-1")] if rest else []


class TracePipeReader:
    """Reads ``trace_pipe`` and hands each batch of complete lines to ``on_lines``."""

    error_reasons = PARSE_ERROR_REASONS  # what the parser counts, each exported from the start

    def __init__(
        self,
        path: Path,
        on_lines: Callable[[list[str], bool], None],
        batch_delay: float = 0.01,
        read_size: int = 1 << 16,
        reads_per_turn: int = 64,
    ) -> None:
        self.path = path
        self.on_lines = on_lines
        self.batch_delay = batch_delay
        self.read_size = read_size
        self.reads_per_turn = reads_per_turn
        self.splitter = LineSplitter()
        self.bytes_read = 0
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise mapped_oserror(exc, TracefsError, f"cannot open {path}", path=path) from exc

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read_available(self, limit: int | None = None) -> int:
        """Read until the pipe is empty (or ``limit`` reads); returns the number of bytes read."""
        total = 0
        chunks: list[bytes] = []
        n = 0
        while limit is None or n < limit:
            try:
                data = os.read(self.fd, self.read_size)  # EINTR is retried by Python itself (PEP 475)
            except BlockingIOError:
                break
            except OSError as exc:
                raise mapped_oserror(exc, TracefsError, f"cannot read {self.path}", path=self.path) from exc
            n += 1
            if not data:
                break
            chunks.append(data)
            total += len(data)
        if chunks:
            self.bytes_read += total
            lines = self.splitter.feed(b"".join(chunks))
            if lines:
                self.on_lines(lines, False)
        return total

    async def run(self) -> None:
        """Read forever; cancel to stop (then call ``drain`` for what is left)."""
        await read_forever(lambda: self.read_available(self.reads_per_turn), lambda: readable([self.fd]),
                           self.batch_delay)

    def drain(self) -> None:
        """Read everything left, including a last line without its newline."""
        self.read_available()
        rest = self.splitter.flush()
        self.on_lines(rest, True)
