"""jsonl.JsonlSink: batches written in order, in writes of a bounded size, every record counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

from uprobe_exporter.jsonl import JsonlSink


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
