"""Offline throughput on one core: captured trace_pipe text → records → JSON lines.

    python benchmarks/bench_offline.py [--repeat 2000]

Uses the kernel text captured in tests/fixtures/kernel/ (entry and return events with int and
string arguments), repeated to make a long stream, fed in batches as the reader does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uprobe_exporter.config import ProbeConfig  # noqa: E402
from uprobe_exporter.formatfile import parse_format  # noqa: E402
from uprobe_exporter.pairing import Pairing  # noqa: E402
from uprobe_exporter.pipeline import Pipeline  # noqa: E402
from uprobe_exporter.reader import LineSplitter  # noqa: E402
from uprobe_exporter.render import EventInfo, Renderer  # noqa: E402
from uprobe_exporter.traceline import TextParser  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "kernel"


def load() -> tuple[TextParser, dict[str, EventInfo], list[ProbeConfig], bytes]:
    formats = [parse_format(p.read_text()) for p in sorted(FIXTURES.glob("*.format"))]
    probes = [ProbeConfig(name=n, binary="/x", function=n, return_probe=n != "types", latency=n != "types")
              for n in ("work", "recurse", "types")]  # the captured "types" probe has no return events
    infos = {f.name: EventInfo(f.name.rsplit("_", 1)[0], "return" if f.is_return else "entry", f"g/{f.name}")
             for f in formats}
    text = (FIXTURES / "calls.trace_pipe").read_bytes()
    return TextParser.for_formats(formats), infos, probes, text


def run_once(parser: TextParser, infos: dict[str, EventInfo], probes: list[ProbeConfig], chunks: list[bytes],
             render: bool) -> tuple[float, float, int]:
    """CPU seconds to parse only, and to parse + pair + histograms (+ JSON); records parsed."""
    splitter = LineSplitter()
    t0 = time.process_time()
    records = 0
    for chunk in chunks:
        items, _ = parser.parse_lines(splitter.feed(chunk))
        records += len(items)
    parse_s = time.process_time() - t0
    pipeline = Pipeline(parser, infos, probes, Renderer(0) if render else None, Pairing())
    splitter = LineSplitter()
    t0 = time.process_time()
    for chunk in chunks:
        pipeline.process(splitter.feed(chunk))
    full_s = time.process_time() - t0
    assert not pipeline.statistics().parse_errors
    return parse_s, full_s, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=300, help="copies of the captured trace in the stream")
    ap.add_argument("--runs", type=int, default=5, help="this machine is noisy: best and median of N runs")
    args = ap.parse_args()
    parser, infos, probes, text = load()
    stream = text * args.repeat
    chunks = [stream[i:i + 8192] for i in range(0, len(stream), 8192)]  # one trace_pipe read ≈ 8 KiB
    runs = [run_once(parser, infos, probes, chunks, render=True) for _ in range(args.runs)]
    records = runs[0][2]
    print(f"{sys.executable}: {records} records from {len(chunks)} reads, {args.runs} runs (best, median)")
    for label, i in (("parse only", 0), ("parse + pair + histograms + JSON", 1)):
        times = sorted(r[i] for r in runs)
        best, median = times[0], statistics.median(times)
        print(f"{label:34} {records / best / 1e3:6.0f} k records/s ({best / records * 1e6:5.2f} µs/record), "
              f"median {records / median / 1e3:6.0f} k/s ({median / records * 1e6:5.2f} µs)")


if __name__ == "__main__":
    main()
