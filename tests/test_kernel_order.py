"""Exact order across CPUs on the real kernel: more threads than cores migrate between CPUs inside
calls that sleep; every return pairs with its own entry (the function echoes its argument), no
duration is negative, and the records leave in timestamp order, with either reader."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ExporterProcess, build_config, read_jsonl, toml_dumps, wait_for_lines

THREADS, CALLS = 8, 3000  # 2 cores here: 4 threads per core, each call sleeps 0-3 ms
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


@pytest.mark.parametrize("reader", ["raw", "text"])
def test_every_return_pairs_with_its_own_entry_in_time_order(
    build: Callable[..., Path], group: str, tmp_path: Path, reader: str,
) -> None:
    binary = build("echo")
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [echo_probe(binary)], out,
                                              exporter={"reader": reader, "buffer_size_kb": 4096})))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        done = subprocess.run([binary, str(THREADS), str(CALLS)], capture_output=True, text=True, check=True)
        calls = json.loads(done.stdout)["calls"]
        assert wait_for_lines(out, 2 * calls) == 2 * calls
        assert exporter.stop()[0] == 0, exporter.stderr
    records = read_jsonl(out)
    assert len(records) == 2 * calls == 2 * THREADS * CALLS
    bad = mispaired(records)
    negative = [r for r in records if r.get("duration_ns", 0) < 0]
    stamps = [r["ts_ns"] for r in records]
    late = [(a, b) for a, b in itertools.pairwise(stamps) if b < a]
    assert not bad and not negative and not late, (
        f"{len(bad)} returns not paired with their own entry, {len(negative)} negative durations, "
        f"{len(late)} records out of order (by up to {max((a - b for a, b in late), default=0)} ns); first: "
        f"{bad[:1]}")
