"""rawreader.RawPipeReader: a turn reads every CPU's pages into the backend's merge and releases them in
one timestamp order, even when a CPU is read only in part; with either backend."""

from __future__ import annotations

import itertools
import random
import struct
from bisect import bisect_right
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_rawpage import PAGE, Spec, encode_event, encode_record, layout
from tests.unit.test_traceline import formats
from tests.unit.twins import backend
from uprobe_exporter.backend import NativeCpuMerge
from uprobe_exporter.decode.rawpage import RawDecoder
from uprobe_exporter.run.rawreader import RawPipeReader


def full_page(first_ts: int, step: int, records: int = 80) -> bytes:
    """A page with ``records`` records ``step`` ns apart from ``first_ts`` (over half full)."""
    fmt = next(f for f in formats() if f.name == "recurse_entry")
    spec = Spec(fmt, 7, step, {"__probe_ip": 1, "__comm": b"t", "__sp": 2, "n": 3})
    data = encode_event(encode_record(Spec(fmt, 7, 0, spec.values)), 0, False)
    data += b"".join(encode_event(encode_record(spec), step, False) for _ in range(records - 1))
    page = struct.pack("=QQ", first_ts, len(data)) + data
    assert len(page) <= PAGE and layout().half_full(page + b"\0" * (PAGE - len(page)))
    return page + b"\0" * (PAGE - len(page))


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_cpu_read_only_in_part_holds_back_the_others(tmp_path: Path, native: bool) -> None:
    """CPU 0 has more pages than a turn reads; CPU 1's records span the same time. A turn releases
    nothing younger than the last record it read of CPU 0, so every record comes out in time order
    (an entry read late from CPU 0 still comes before its return from CPU 1)."""
    cpu_pages = {0: [full_page(1000 + i * 8000, 100) for i in range(40)],
                 1: [full_page(1050 + i * 80_000, 1000) for i in range(4)]}
    for cpu, pages in cpu_pages.items():
        (tmp_path / "per_cpu" / f"cpu{cpu}").mkdir(parents=True)
        (tmp_path / "per_cpu" / f"cpu{cpu}" / "trace_pipe_raw").write_bytes(b"".join(pages))
    decoder = RawDecoder.for_formats(layout(), formats(), backend(native).walk)
    released: list[int] = []
    reader = RawPipeReader(tmp_path, [0, 1], decoder, backend(native).new_merge(),
                           lambda located, lost: released.extend(r[0] for r in located), pages_per_turn=32)
    assert isinstance(reader.merge, NativeCpuMerge) == native
    try:
        assert reader.read_available(32) == 32 + 4 and reader.behind
        assert released and max(released) <= 1000 + 31 * 8000 + 79 * 100, "CPU 0's unread pages are older"
        while reader.read_available(32):
            pass
        reader.drain()
    finally:
        reader.close()
    assert len(released) == 44 * 80 and released == sorted(released)


# --- the reader against a simulation of the kernel's per-CPU ring buffers ---------------------------------

class RingSim:
    """Each CPU's ``trace_pipe_raw`` as the kernel serves it (kernel/trace/ring_buffer.c:
    ring_buffer_read_page with full=0): the writer fills pages in turn and its records become visible
    as they are committed, in order; a read takes a whole page the writer has left, or copies what is
    committed and unread of the page the reader is on — the writer's page, or the rest of a page whose
    beginning an earlier read copied (the writer may be pages ahead by then); nothing committed and
    unread is EAGAIN. Time moves on by a little at every read, as the writers do while the reader reads."""

    def __init__(self, events: dict[int, list[tuple[int, int, bytes]]], rng: random.Random) -> None:
        self.events = events  # cpu → [(ts, committed at, record)], ts in order
        self.rng = rng
        self.t = 0
        self.fd_cpu: dict[int, int] = {}
        self.pages: dict[int, list[list[int]]] = {}  # cpu → the writer's pages, as lists of event indexes
        self.committed: dict[int, list[int]] = {}  # cpu → running max of the commit times (visibility)
        self.reader = dict.fromkeys(events, (0, 0))  # cpu → (page, events of it already read)
        for cpu, evs in events.items():
            pages: list[list[int]] = [[]]
            used = 0
            for i, (_, _, record) in enumerate(evs):
                size = len(encode_event(record, 0, False))
                if used + size > PAGE - 16:
                    pages.append([])
                    used = 0
                pages[-1].append(i)
                used += size
            self.pages[cpu] = pages
            self.committed[cpu] = list(itertools.accumulate((c for _, c, _ in evs), max))

    def read(self, fd: int, size: int) -> bytes:
        cpu = self.fd_cpu[fd]
        self.t += self.rng.choice((0, 0, 2_000, 30_000))
        evs, pages = self.events[cpu], self.pages[cpu]
        visible = bisect_right(self.committed[cpu], self.t)
        page, done = self.reader[cpu]
        while page < len(pages) and done == len(pages[page]):
            page, done = page + 1, 0
        if page == len(pages) or not pages[page] or pages[page][done] >= visible:
            self.reader[cpu] = (page, done)
            raise BlockingIOError
        indexes = pages[page]
        writer_left = indexes[-1] + 1 < visible
        take = indexes if done == 0 and writer_left else indexes[done:min(len(indexes), visible - indexes[0])]
        self.reader[cpu] = (page, done + len(take))
        data, prev = b"", evs[take[0]][0]
        for i in take:
            data += encode_event(evs[i][2], evs[i][0] - prev, False)
            prev = evs[i][0]
        out = struct.pack("=QQ", evs[take[0]][0], len(data)) + data
        return out + b"\0" * (size - len(out))


def sim_events(rng: random.Random, cpus: int, per_cpu: int, hold_ns: int) -> dict[int, list[tuple[int, int, bytes]]]:
    """Records close in time on every CPU (a burst here, a pause there), each committed within the hold."""
    fmt = next(f for f in formats() if f.name == "recurse_entry")
    out = {}
    for cpu in range(cpus):
        ts, evs = 1_000_000 + rng.randrange(10_000), []
        for i in range(rng.randrange(per_cpu + 1)):
            ts += rng.choice((1, 50, 500, 3_000, 20_000, 400_000))
            comm = bytes(rng.randrange(97, 123) for _ in range(rng.randrange(1, 16)))
            record = encode_record(Spec(fmt, 7, 0, {"__probe_ip": 1, "__comm": comm, "__sp": 2, "n": i}))
            evs.append((ts, ts + rng.randrange(hold_ns // 2), record))
        out[cpu] = evs
    return out


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), cpus=st.integers(1, 4), limit=st.sampled_from([32, 3, 1]))
def test_the_reader_releases_what_the_kernel_serves_in_time_order(
    tmp_path: Path, native: bool, seed: int, cpus: int, limit: int,
) -> None:
    """A differential test against a sort of everything written: the simulated kernel hands out full
    pages, partial pages of its writers and the rest of partly read pages, the reader's turns come at
    any time; every record comes out once, all in timestamp order, with either merge."""
    rng = random.Random(seed)
    hold_ns = 2_000_000
    events = sim_events(rng, cpus, 700, hold_ns)
    for cpu in events:
        (tmp_path / "per_cpu" / f"cpu{cpu}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "per_cpu" / f"cpu{cpu}" / "trace_pipe_raw").touch()
    sim = RingSim(events, rng)
    decoder = RawDecoder.for_formats(layout(), formats(), backend(native).walk)
    released: list[int] = []
    reader = RawPipeReader(tmp_path, list(events), decoder, backend(native).new_merge(),
                           lambda located, lost: released.extend(r[0] for r in located),
                           pages_per_turn=limit, read=sim.read, clock=lambda: sim.t)
    assert isinstance(reader.merge, NativeCpuMerge) == native
    sim.fd_cpu = {fd: cpu for cpu, fd in reader.fds.items()}
    end = max((evs[-1][0] for evs in events.values() if evs), default=0) + 5_000_000
    try:
        while sim.t < end:
            sim.t += rng.choice((0, 200_000, 1_000_000, 3_000_000, 10_000_000))
            reader.read_available(limit)
        sim.t = 1 << 62  # every record committed
        reader.drain()
    finally:
        reader.close()
    everything = sorted(ts for evs in events.values() for ts, _, _ in evs)
    assert len(released) == len(everything)
    late = sum(b < a for a, b in itertools.pairwise(released))
    assert released == everything, f"{late} records released after a younger one"
