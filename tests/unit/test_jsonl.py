"""jsonl.JsonlSink: batches written in order, in writes of a bounded size, every record counted."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from uprobe_exporter.run.jsonl import JsonlSink


def test_batches_are_written_in_order_in_bounded_writes(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    batches = [b"".join(b'{"batch":%d,"n":%d}\n' % (i, k) for k in range(i % 50 + 1)) for i in range(300)]
    sink = JsonlSink(str(out), max_queue_bytes=1 << 30, write_bytes=64 << 10)
    writes: list[int] = []

    async def main() -> None:
        await sink.open()
        write = sink._write

        async def counted(data: bytes, records: int) -> None:
            writes.append(len(data))
            await write(data, records)

        sink._write = counted  # type: ignore[method-assign]  # to see the size of each write
        for i, batch in enumerate(batches):
            sink.submit(batch, i % 50 + 1)
        task = asyncio.create_task(sink.run())
        sink.finish()
        await task
        await sink.close()

    asyncio.run(main())
    assert out.read_bytes() == b"".join(batches)
    assert sink.records_written == sum(i % 50 + 1 for i in range(300)) and sink.records_dropped == 0
    assert len(writes) > 1 and max(writes) <= 64 << 10 and sink.queued_bytes == 0


def lines(n: int, start: int = 0) -> bytes:
    return b"".join(b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 100) for i in range(start, start + n))



def run_into_pipe(main: Callable[[], Coroutine[Any, Any, None]], read_end: int, write_end: int) -> bytes:
    """Run ``main`` (a sink writing into the pipe), then return what the pipe holds; both ends closed."""
    try:
        asyncio.run(main())
        os.set_blocking(read_end, False)
        return os.read(read_end, 4 << 20)
    finally:
        os.close(read_end)
        os.close(write_end)

def test_a_failing_output_drops_and_counts_and_keeps_running() -> None:
    """/dev/full: every write fails with ENOSPC; every record is counted dropped, the sink keeps running
    (retrying) and takes later batches, which are counted too."""
    sink = JsonlSink("/dev/full", retry_seconds=0.05)

    async def main() -> None:
        await sink.open()
        task = asyncio.create_task(sink.run())
        sink.submit(lines(10), 10)
        await asyncio.sleep(0.02)
        assert not task.done() and sink.write_errors == 1
        sink.submit(lines(5), 5)
        await asyncio.sleep(0.1)  # past the retry: tried again
        sink.finish()
        await task
        await sink.close()

    asyncio.run(main())
    assert sink.write_errors == 2 and sink.records_dropped == 15 and sink.records_written == 0


def test_a_pipe_nobody_reads_takes_whole_lines_only_and_abandon_counts_exactly() -> None:
    read_end, write_end = os.pipe()
    sink = JsonlSink(f"/proc/self/fd/{write_end}")
    total = 0

    async def main() -> None:
        nonlocal total
        await sink.open()
        task = asyncio.create_task(sink.run())
        for k in range(400):  # 4.8 MB: far more than the pipe holds (1 MiB once the sink enlarged it)
            sink.submit(lines(100, k * 100), 100)
            total += 100
        await asyncio.sleep(0.2)
        sink.finish()
        await asyncio.sleep(0.2)
        assert not task.done(), "the pipe is full: the last records are not taken"
        await sink.abandon(task)
        sink.submit(lines(1), 1)  # after the end: counted dropped
        total += 1
        await sink.close()

    data = run_into_pipe(main, read_end, write_end)
    assert not sink.stuck
    assert data.endswith(b"\n") and data.count(b"\n") == sink.records_written > 0
    assert data == lines(sink.records_written)
    assert sink.records_written + sink.records_dropped == total


def test_cancelled_writer_counts_every_record() -> None:
    """Another task failed and the TaskGroup cancels the sink mid-write: still every record counted."""
    read_end, write_end = os.pipe()
    sink = JsonlSink(f"/proc/self/fd/{write_end}")

    async def main() -> None:
        await sink.open()
        task = asyncio.create_task(sink.run())
        for k in range(400):  # more than the pipe holds: the write is in flight when cancelled
            sink.submit(lines(100, k * 100), 100)
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)  # the writer thread has stopped
        await sink.close()

    data = run_into_pipe(main, read_end, write_end)
    assert data == lines(sink.records_written) and 0 < sink.records_written < 40000
    assert sink.records_written + sink.records_dropped == 40000
