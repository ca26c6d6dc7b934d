"""The readers' polling loop: read while there is something to read, else wait for poll() and a short
batch delay, so that a burst is read in a few large reads instead of one wake-up per event (a reader
that wakes per event slows the traced program down: kernel/trace/trace.c wakes waiters from irq_work
on each commit). Shared by the text reader (reader.py) and the raw reader (rawreader.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable


async def readable(fds: Iterable[int], timeout: float | None = None) -> None:
    """Until poll() reports data on any of ``fds``, or ``timeout`` seconds have passed."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    for fd in fds:
        loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(ready, timeout)
    except TimeoutError:
        pass
    finally:
        for fd in fds:
            loop.remove_reader(fd)


async def read_forever(read_some: Callable[[], int], wait: Callable[[], Awaitable[None]], batch_delay: float,
                       behind: Callable[[], bool] = lambda: True) -> None:
    """Read while there is something to read (yielding to the loop between turns); when there is not,
    wait for data, then sleep ``batch_delay`` so that a burst is read in a few large reads. A turn that
    read something but caught up with the writers (``behind()`` is false) also sleeps ``batch_delay``."""
    while True:
        if read_some() == 0:
            await wait()
            await asyncio.sleep(batch_delay)
        else:
            await asyncio.sleep(0 if behind() else batch_delay)
