"""Offline throughput on one core: captured kernel output → records → JSON lines, for both readers.

    python benchmarks/bench_offline.py [--repeat 300] [--runs 5]

Uses what tests/fixtures/capture.py captured from this kernel (entry and return events with int and
string arguments, and a probe with ten arguments of every type): the text of ``trace_pipe`` (text
reader) and the pages of ``per_cpu/cpuN/trace_pipe_raw`` (raw reader), repeated to make a long stream
and fed in batches as the readers do. Prints, per reader, records decoded per second, and records
decoded + paired + put in latency histograms + serialized to JSON per second.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uprobe_exporter.backend import CHOSEN, PYTHON, Backend  # noqa: E402
from uprobe_exporter.decode.rawpage import Located, PageLayout, RawDecoder  # noqa: E402
from uprobe_exporter.decode.records import LostEvents, TraceRecord  # noqa: E402
from uprobe_exporter.decode.traceline import TextParser  # noqa: E402
from uprobe_exporter.kernel.formatfile import EventFormat, parse_format  # noqa: E402
from uprobe_exporter.pipeline.calls import Pipeline  # noqa: E402
from uprobe_exporter.pipeline.pairing import Pairing  # noqa: E402
from uprobe_exporter.pipeline.raw import RawPipeline  # noqa: E402
from uprobe_exporter.pipeline.render import EventInfo, Renderer  # noqa: E402
from uprobe_exporter.pipeline.text import TextPipeline  # noqa: E402
from uprobe_exporter.plan.config import ProbeConfig  # noqa: E402
from uprobe_exporter.run.reader import LineSplitter  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "kernel"
PAGES_PER_BATCH = 32  # what RawPipeReader reads per CPU per turn
TEXT_READ = 8192  # one trace_pipe read ≈ 8 KiB


def formats() -> list[EventFormat]:
    return [parse_format(p.read_text()) for p in sorted(FIXTURES.glob("*.format"))]


def load() -> tuple[TextParser, dict[str, EventInfo], list[ProbeConfig], bytes]:
    """The text workload's parts: parser, event infos, probes and the captured trace_pipe text."""
    fmts = formats()
    p = pipeline(fmts, None)
    return TextParser.for_formats(fmts), p.infos, list(probes_of()), (FIXTURES / "calls.trace_pipe").read_bytes()


def probes_of() -> list[ProbeConfig]:
    return [ProbeConfig(name=n, binary="/x", function=n, return_probe=n != "types", latency=n != "types")
            for n in ("work", "recurse", "types")]  # the captured "types" probe has no return events


BACKEND = [CHOSEN]  # --python-only: the pure-Python twins of the native parts (what runs without a C compiler)


def pipeline(fmts: list[EventFormat], parser: TextParser | None, render: bool = True) -> Pipeline:
    """A text pipeline with ``parser``, else a raw one."""
    probes = probes_of()
    infos = {f.name: EventInfo(f.name.rsplit("_", 1)[0], "return" if f.is_return else "entry", f"g/{f.name}")
             for f in fmts}
    backend: Backend = BACKEND[0]
    renderer, pairing = Renderer(0) if render else None, Pairing(twin=backend.pairing)
    if parser is not None:
        return TextPipeline(parser, infos, probes, renderer, pairing, tgid_of=lambda tid: 1)
    return RawPipeline(infos, probes, renderer, pairing, backend, tgid_of=lambda tid: 1)


Workload = list[tuple[str, Callable[[], int]]]  # (what is measured, a run that returns the records)
FULL = "decode + pair + histograms + JSON"


def text_workload(repeat: int) -> Workload:
    fmts = formats()
    stream = (FIXTURES / "calls.trace_pipe").read_bytes() * repeat
    chunks = [stream[i:i + TEXT_READ] for i in range(0, len(stream), TEXT_READ)]

    def decode() -> int:
        parser, splitter, n = TextParser.for_formats(fmts), LineSplitter(), 0
        for chunk in chunks:
            n += len(parser.parse_lines(splitter.feed(chunk))[0])
        return n

    def full() -> int:
        p, splitter, n = pipeline(fmts, TextParser.for_formats(fmts)), LineSplitter(), 0
        assert isinstance(p, TextPipeline)
        for chunk in chunks:
            batch = p.process(splitter.feed(chunk))
            n += batch[1] if batch else 0
        assert not p.statistics().parse_errors
        return n

    return [("decode only", decode), (FULL, full)]


def raw_workload(repeat: int) -> Workload:
    """The captured pages of each CPU, ``repeat`` copies, each copy's page timestamps moved on so that a
    CPU's pages stay in time order, read ``PAGES_PER_BATCH`` copies per batch as the reader reads them."""
    fmts = formats()
    layout = PageLayout.parse((FIXTURES / "header_page").read_text())
    captured: dict[int, list[bytes]] = {}
    for path in sorted(FIXTURES.glob("calls.raw.cpu*")):
        data = path.read_bytes()
        captured[int(path.name.removeprefix("calls.raw.cpu"))] = [
            data[i:i + layout.page_size] for i in range(0, len(data), layout.page_size)]

    def copy(page: bytes, k: int) -> bytes:
        return struct.pack("=Q", struct.unpack_from("=Q", page)[0] + k * (1 << 40)) + page[8:]

    batches = [{cpu: [copy(p, k) for k in range(b, b + PAGES_PER_BATCH) for p in cpu_pages]
                for cpu, cpu_pages in captured.items()} for b in range(0, repeat, PAGES_PER_BATCH)]

    def locate() -> int:
        decoder, n = RawDecoder.for_formats(layout, fmts, BACKEND[0].walk), 0
        for batch in batches:
            located: list[Located] = []
            lost: list[LostEvents] = []
            for cpu, cpu_pages in batch.items():
                for page in cpu_pages:
                    decoder.locate(page, cpu, located, lost)
            n += len(located)
        return n

    def decode() -> int:
        decoder, n = RawDecoder.for_formats(layout, fmts, BACKEND[0].walk), 0
        for batch in batches:  # each batch dropped after counting, as the reader hands it on
            items: list[TraceRecord | LostEvents] = []
            for cpu, cpu_pages in batch.items():
                for page in cpu_pages:
                    decoder.decode(page, cpu, items)
            n += len(items)
        return n

    def emitted(render: bool) -> int:
        """As RawPipeReader and the daemon: per-CPU runs merged in time order (CpuMerge, or its native
        twin), each record emitted by its event's emitter."""
        p = pipeline(fmts, None, render=render)
        assert isinstance(p, RawPipeline)
        decoder = RawDecoder(layout, p.emitters(fmts), p.decode_errors, BACKEND[0].walk)
        merge = BACKEND[0].new_merge(hold_ns=0)
        for batch in batches:
            lost: list[LostEvents] = []
            runs = []
            for cpu, cpu_pages in batch.items():
                run = merge.new_run()
                for page in cpu_pages:
                    decoder.locate(page, cpu, run, lost)
                runs.append(run)
            p.process_located(merge.push(runs, 1 << 62), lost)
        p.process_located(merge.push([], 0, final=True), [])
        assert not any(decoder.errors.values())
        return sum(p.statistics().events.values())

    return [("pages walked (records located)", locate), ("decode to TraceRecords", decode),
            ("decode + pair + histograms (emitters, no JSON)", lambda: emitted(False)),
            (FULL + " (emitters)", lambda: emitted(True))]


def measure(fn: Callable[[], int], runs: int) -> tuple[int, float, float]:
    """Records, best and median CPU seconds over ``runs``."""
    times, n = [], 0
    for _ in range(runs):
        t0 = time.process_time()
        n = fn()
        times.append(time.process_time() - t0)
    return n, min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=300, help="copies of the captured trace in the stream")
    ap.add_argument("--runs", type=int, default=5, help="this machine is noisy: best and median of N runs")
    ap.add_argument("--python-only", action="store_true", help="the Python references only (backend.PYTHON)")
    args = ap.parse_args()
    if args.python_only:
        BACKEND[0] = PYTHON
    print(f"{sys.executable}: {args.runs} runs each (best, median); backend {BACKEND[0].name}")
    for reader, workload in (("raw", raw_workload), ("text", text_workload)):
        for label, fn in workload(args.repeat):
            n, best, median = measure(fn, args.runs)
            print(f"{reader:4} {label:47} {n / best / 1e3:6.0f} k records/s ({best / n * 1e6:5.2f} µs/record), "
                  f"median {n / median / 1e3:6.0f} k/s ({median / n * 1e6:5.2f} µs)  [{n} records]")


if __name__ == "__main__":
    main()
