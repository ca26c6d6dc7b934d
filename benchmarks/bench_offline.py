"""Offline throughput on one core: captured trace_pipe text → records → JSON lines.

    python benchmarks/bench_offline.py [--repeat 2000]

Uses the kernel text captured in tests/fixtures/kernel/ (entry and return events with int and
string arguments), repeated to make a long stream, fed in batches as the reader does.
"""

from __future__ import annotations

import argparse
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
    probes = [ProbeConfig(name=n, binary="/x", function=n, return_probe=True, latency=True)
              for n in ("work", "recurse", "types")]
    infos = {f.name: EventInfo(f.name.rsplit("_", 1)[0], "return" if f.is_return else "entry", f"g/{f.name}",
                               latency=True) for f in formats}
    text = (FIXTURES / "calls.trace_pipe").read_bytes()
    return TextParser.for_formats(formats), infos, probes, text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=2000)
    args = ap.parse_args()
    parser, infos, probes, text = load()
    stream = text * args.repeat
    chunks = [stream[i:i + 8192] for i in range(0, len(stream), 8192)]  # one trace_pipe read ≈ 8 KiB
    n_lines = stream.count(b"\n")

    # parse only
    splitter = LineSplitter()
    t0 = time.process_time()
    records = 0
    for chunk in chunks:
        items, _ = parser.parse_lines(splitter.feed(chunk))
        records += len(items)
    parse_s = time.process_time() - t0

    # parse + pair + histogram + JSON
    pipeline = Pipeline(parser, infos, probes, Renderer(0), Pairing())
    splitter = LineSplitter()
    t0 = time.process_time()
    out_bytes = 0
    for chunk in chunks:
        out = pipeline.process(splitter.feed(chunk))
        out_bytes += len(out or b"")
    full_s = time.process_time() - t0
    errors = sum(pipeline.statistics().parse_errors.values())
    print(f"lines: {n_lines}  records: {records}  parse errors: {errors}")
    for label, seconds in (("parse only", parse_s), ("parse + pair + histograms + JSON", full_s)):
        print(f"{label:34} {records / seconds / 1e3:8.0f} k records/s  ({seconds / records * 1e6:.2f} µs/record)")
    print(f"JSON output: {out_bytes / records:.0f} bytes/record")


if __name__ == "__main__":
    main()
