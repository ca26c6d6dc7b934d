"""Exact order across CPUs on the real kernel: more threads than cores migrate between CPUs inside
calls that sleep; every return pairs with its own entry (the function echoes its argument), no
duration is negative, and the records leave in timestamp order, with either reader. With an entry
filter, only the calls it keeps are emitted, and the other returns are counted as filtered."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ExporterProcess, build_config, read_jsonl, toml_dumps, wait_for_lines
from tests.kernel.test_metrics import Scrape, scrape
from tests.prom import free_port

THREADS, CALLS = 8, 3000  # 2 cores here: 4 threads per core, each call sleeps 0-3 ms
FILTER_CALLS = 1000
# ts_ns is the trace clock plus the wall-clock offset, which the exporter refreshes every second (it moves
# by a few µs): the duration (from the trace clock) may differ that much from the difference of ts_ns.
# A return paired with another call of its thread would be off by at least that call's own duration.
OFFSET_MOVE_NS = 20_000


def echo_probe(binary: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "echo", "binary": str(binary), "function": "echo", "args": {"x": "%di:s32"}, "return": True,
            "return_args": {"ret": "$retval:s32"}, "latency": True, **extra}


def mispaired(records: list[dict[str, Any]]) -> list[str]:
    """Per thread, in output order, each entry must be followed by the return of the same call (the
    returned value is the argument) whose duration is the time between them."""
    problems: list[str] = []
    threads: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        threads[r["tid"]].append(r)
    for tid, recs in threads.items():
        for entry, ret in zip(recs[::2], recs[1::2], strict=False):
            if entry["type"] != "entry" or ret["type"] != "return" or ret["args"]["ret"] != entry["args"]["x"] \
                    or "duration_ns" not in ret \
                    or abs(ret["duration_ns"] - (ret["ts_ns"] - entry["ts_ns"])) > OFFSET_MOVE_NS:
                problems.append(f"tid {tid}: {json.dumps(entry)} then {json.dumps(ret)}")
        if len(recs) % 2:
            problems.append(f"tid {tid}: {len(recs)} records")
    return problems


def settled(port: int, calls: int) -> Scrape:
    """A scrape once the exporter has seen every return of ``calls`` calls, emitted or filtered (scrapes
    may be served from a cache)."""
    deadline = time.monotonic() + 30
    while True:
        s = scrape(port)
        seen = s.value("uprobe_events_total", type="return") + s.value("uprobe_exporter_returns_filtered_total")
        if seen >= calls or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


def run_echo(binary: Path, group: str, tmp_path: Path, reader: str, calls: int,
             **probe: Any) -> tuple[dict[str, int], list[dict[str, Any]], Scrape]:
    """The exporter on ``calls`` calls of echo per thread: what the target counted, the records, a scrape."""
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.toml"
    port = free_port()
    config.write_text(toml_dumps(build_config(group, [echo_probe(binary, **probe)], out,
                                              exporter={"reader": reader, "buffer_size_kb": 4096},
                                              metrics={"listen": f"127.0.0.1:{port}"})))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        done = subprocess.run([binary, str(THREADS), str(calls)], capture_output=True, text=True, check=True)
        counted: dict[str, int] = json.loads(done.stdout)
        kept = counted["mask7"] if probe.get("filter") else counted["calls"]
        assert wait_for_lines(out, 2 * kept) == 2 * kept
        metrics = settled(port, counted["calls"])
        assert exporter.stop()[0] == 0, exporter.stderr
    return counted, read_jsonl(out), metrics


@pytest.mark.parametrize("reader", ["raw", "text"])
def test_every_return_pairs_with_its_own_entry_in_time_order(
    build: Callable[..., Path], group: str, tmp_path: Path, reader: str,
) -> None:
    counted, records, metrics = run_echo(build("echo"), group, tmp_path, reader, CALLS)
    calls = counted["calls"]
    assert len(records) == 2 * calls == 2 * THREADS * CALLS
    bad = mispaired(records)
    negative = [r for r in records if r.get("duration_ns", 0) < 0]
    stamps = [r["ts_ns"] for r in records]
    late = [(a, b) for a, b in itertools.pairwise(stamps) if b < a]
    assert not bad and not negative and not late, (
        f"{len(bad)} returns not paired with their own entry, {len(negative)} negative durations, "
        f"{len(late)} records out of order (by up to {max((a - b for a, b in late), default=0)} ns); first: "
        f"{bad[:1]}")
    assert metrics.value("uprobe_exporter_negative_durations_total", probe="echo") == 0
    assert metrics.value("uprobe_exporter_returns_without_entry_total", probe="echo") == 0
    assert metrics.value("uprobe_exporter_calls_evicted_total", probe="echo") == 0, "an exited thread's last call"
    assert metrics.value("uprobe_call_duration_seconds_count", probe="echo") == calls


@pytest.mark.parametrize("reader", ["raw", "text"])
def test_with_an_entry_filter_only_the_calls_it_keeps_are_emitted(
    build: Callable[..., Path], group: str, tmp_path: Path, reader: str,
) -> None:
    """The filter keeps the calls whose argument is a multiple of 8 (the target counts them): those
    calls' entries and returns are emitted, paired; every other return is counted as filtered, not
    emitted and not as a return without entry; the kernel's hits add up."""
    counted, records, metrics = run_echo(build("echo"), group, tmp_path, reader, FILTER_CALLS, filter="!(x & 7)")
    calls, kept = counted["calls"], counted["mask7"]
    assert 0 < kept < calls // 4
    assert len(records) == 2 * kept
    assert all(r["args"].get("x", r["args"].get("ret", 1)) % 8 == 0 for r in records)
    bad = mispaired(records)
    assert not bad, f"{len(bad)} returns not paired with their own entry; first: {bad[:1]}"
    assert metrics.value("uprobe_events_total", probe="echo", type="return") == kept
    assert metrics.value("uprobe_exporter_returns_filtered_total", probe="echo") == calls - kept
    assert metrics.value("uprobe_exporter_returns_without_entry_total", probe="echo") == 0
    assert metrics.value("uprobe_exporter_kernel_lost_events_total") == 0
    assert metrics.value("uprobe_probe_hits_total", event=f"{group}/echo_return") == calls
