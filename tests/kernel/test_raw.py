"""The raw reader on the real kernel: the same records as the text reader, and exact loss accounting."""

from __future__ import annotations

import itertools
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import (
    ROOT,
    TIME_SLACK,
    ExporterProcess,
    build_config,
    compile_c,
    read_jsonl,
    toml_dumps,
    wait_for_lines,
)
from tests.kernel.test_metrics import Scrape, scrape
from tests.kernel.test_records import RECURSE, WORK
from tests.prom import free_port
from uprobe_exporter.kernel.session import remove_group
from uprobe_exporter.kernel.tracefs import Tracefs

THREADS, CALLS, DEPTH = 4, 50, 5
SAME_HIT_NS = 200_000 * TIME_SLACK  # both readers' probes fire on the same hit, one after the other
# Under emulation (tests/vm) the CPU too: the kernel writes a hit into each instance's buffer in turn,
# and a vCPU stalled between the two writes lets the thread move (seen on 5.10: cpu 0 in one, 1 in the other).
TIMING = ("time", "ts_ns", "duration_ns", "event") + (() if TIME_SLACK == 1 else ("cpu",))


def by_thread(records: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[r["tid"]].append(r)
    return out


def test_text_and_raw_readers_emit_the_same_records(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    """Two exporters trace the same run of the target, one per reader: every record is the same (strings
    with quotes, '=', braces, newlines and non-UTF-8 bytes included) except for timestamp precision."""
    binary = build("calls")
    text_group = f"{group}_text"
    outputs = {"raw": tmp_path / "raw.jsonl", "text": tmp_path / "text.jsonl"}
    configs = []
    for reader, g in (("raw", group), ("text", text_group)):
        config = tmp_path / f"{reader}.toml"
        config.write_text(toml_dumps(build_config(
            g, [{"binary": str(binary), **WORK}, {"binary": str(binary), **RECURSE}], outputs[reader],
            exporter={"reader": reader})))
        configs.append(config)
    expected = 2 * THREADS * CALLS + 2 * THREADS * (DEPTH + 1)
    try:
        with ExporterProcess(configs[0]) as raw, ExporterProcess(configs[1]) as text:
            raw.wait_ready()
            text.wait_ready()
            subprocess.run([binary, str(THREADS), str(CALLS), str(DEPTH)], capture_output=True, check=True)
            for out in outputs.values():
                assert wait_for_lines(out, expected) == expected
            assert raw.stop()[0] == 0, raw.stderr
            assert text.stop()[0] == 0, text.stderr
    finally:
        left = remove_group(tracefs, text_group, tracefs.instance(text_group))
    assert not left, f"the text exporter left {left}"
    records = {reader: read_jsonl(path) for reader, path in outputs.items()}
    raw_threads, text_threads = by_thread(records["raw"]), by_thread(records["text"])
    assert raw_threads.keys() == text_threads.keys()
    for tid, raw_recs in raw_threads.items():
        text_recs = text_threads[tid]
        assert [{k: v for k, v in r.items() if k not in TIMING} for r in raw_recs] == \
            [{k: v for k, v in r.items() if k not in TIMING} for r in text_recs]
        for r, t in zip(raw_recs, text_recs, strict=True):
            assert abs(r["ts_ns"] - t["ts_ns"]) < SAME_HIT_NS
            assert ("duration_ns" in r) == ("duration_ns" in t)
            if "duration_ns" in r:
                assert abs(r["duration_ns"] - t["duration_ns"]) < SAME_HIT_NS
    # Both streams are in timestamp order across CPUs; text timestamps stop at the microsecond.
    # (Emulated: a virtual CPU stalled between an event's timestamp and its commit makes it late by as much.)
    for recs in records.values():
        backsteps = [a["ts_ns"] - b["ts_ns"] for a, b in itertools.pairwise(recs)]
        assert max(backsteps) <= (0 if TIME_SLACK == 1 else SAME_HIT_NS), "out of timestamp order"
    assert len({r["ts_ns"] % 1000 for r in records["text"]}) == 1
    assert len({r["ts_ns"] % 1000 for r in records["raw"]}) > 1
    assert {r["args"]["s"] for r in records["raw"] if "s" in r["args"]} >= {
        'a "quoted" word', "n=5\" fake=1", "line one\nline two", "\\xff\\xfe not utf-8 \\xc3(", "{braces},[1,2]"}


def _settled(port: int) -> Scrape:
    """A scrape once the exporter has read everything: its counts stop moving."""
    last = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = scrape(port)
        now = (s.value("uprobe_events_total"), s.value("uprobe_exporter_kernel_lost_events_total"))
        if now == last:
            return s
        last = now
        time.sleep(0.5)
    raise AssertionError(f"the exporter never settled: {last}")


def test_overflowing_buffer_loss_is_counted_exactly(tracefs: Tracefs, group: str, tmp_path: Path) -> None:
    """A hot function fills a tiny buffer between two reads: records + events the kernel reports lost =
    the kernel's own hit count, exactly; the missed-events flags of the pages are seen too."""
    binary = compile_c(ROOT / "benchmarks" / "targets" / "loop.c", tmp_path / "loop")
    port = free_port()
    probe = {"name": "hot", "binary": str(binary), "function": "work_push", "args": {"n": "%di:s64"},
             "return": True, "return_args": {"ret": "$retval:s64"}}
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], out, exporter={"buffer_size_kb": 8},
                                              metrics={"listen": f"127.0.0.1:{port}"})))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        done = subprocess.run([binary, "push", "1"], capture_output=True, text=True, check=True)
        calls = int(done.stdout.split()[0])
        s = _settled(port)
        hits = s.value("uprobe_probe_hits_total")
        records = s.value("uprobe_events_total")
        lost = s.value("uprobe_exporter_kernel_lost_events_total")
        assert exporter.stop()[0] == 0, exporter.stderr
    assert hits == 2 * calls, "the entry and the return probe each count every call"
    assert lost > 0, "a 8 KiB buffer cannot hold a hot function's events for one batch"
    assert records + lost == hits
    assert s.value("uprobe_exporter_lost_markers_total") > 0
    assert len(read_jsonl(out)) == records
    assert s.value("uprobe_exporter_parse_errors_total") == 0
