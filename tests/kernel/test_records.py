"""End to end on the real kernel: every record the exporter emits matches what the target did."""

from __future__ import annotations

import json
import subprocess
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ExporterProcess, build_config, read_jsonl, toml_dumps, wait_for_lines

THREADS, CALLS, DEPTH = 4, 50, 5
WORK = {"name": "work", "function": "work", "args": {"a": "%di:s32", "s": "+0(%si):string"},
        "return": True, "return_args": {"ret": "$retval:s64"}}
RECURSE = {"name": "recurse", "function": "recurse", "args": {"n": "%di:s32"},
           "return": True, "return_args": {"ret": "$retval:s32"}}


def text_of(hex_bytes: str) -> str:
    """What the exporter must print for these bytes: UTF-8 text, other bytes as \\xNN."""
    return bytes.fromhex(hex_bytes).decode("utf-8", "backslashreplace")


def run_calls(binary: Path, group: str, tmp_path: Path, probes: list[dict[str, Any]],
              threads: int = THREADS, calls: int = CALLS, depth: int = DEPTH, **sections: Any,
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the exporter on ``binary``, run the target once, return (records, the target's report)."""
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [{"binary": str(binary), **p} for p in probes], out,
                                              **sections)))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        done = subprocess.run([binary, str(threads), str(calls), str(depth)], capture_output=True, check=True)
        report = [json.loads(line) for line in done.stdout.decode().splitlines()]
        names = {p["name"] for p in probes}
        expected = 2 * threads * calls * ("work" in names) + 2 * threads * (depth + 1) * ("recurse" in names)
        wait_for_lines(out, expected)
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    return read_jsonl(out), report


def check_work_records(records: list[dict[str, Any]], report: list[dict[str, Any]], group: str, binary: Path) -> None:
    calls = [r for r in report if r["fn"] == "work"]
    entries = [r for r in records if r["probe"] == "work" and r["type"] == "entry"]
    returns = [r for r in records if r["probe"] == "work" and r["type"] == "return"]
    assert Counter((r["tid"], r["args"]["a"], r["args"]["s"]) for r in entries) == \
        Counter((c["tid"], c["a"], text_of(c["s_hex"])) for c in calls)
    assert Counter((r["tid"], r["args"]["ret"]) for r in returns) == Counter((c["tid"], c["ret"]) for c in calls)
    comm_of = {c["tid"]: text_of(c["comm_hex"]) for c in calls}
    pid = calls[0]["pid"]
    for r in entries + returns:
        assert r["comm"] == comm_of[r["tid"]]
        assert r["pid"] == pid
        assert r["event"] == f"{group}/work_{r['type']}"
        assert r["time"].endswith("Z") and r["ts_ns"] > 1_700_000_000 * 10**9
    assert all(r["duration_ns"] >= 0 for r in returns), "every return was paired with its entry"
    assert {text_of(c["comm_hex"]) for c in calls} == {"w-0 a-b c", binary.name[:15]}


def check_recursion(records: list[dict[str, Any]], depth: int) -> None:
    """Each return of recurse(k) carries ts(return) − ts(entry n=k) of the same thread."""
    by_tid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["probe"] == "recurse":
            by_tid[r["tid"]].append(r)
    assert by_tid
    for recs in by_tid.values():
        entry_ts = {r["args"]["n"]: r["ts_ns"] for r in recs if r["type"] == "entry"}
        returns = [r for r in recs if r["type"] == "return"]
        assert sorted(entry_ts) == list(range(depth + 1))
        assert [r["args"]["ret"] for r in returns] == list(range(depth + 1))
        for r in returns:
            assert r["duration_ns"] == r["ts_ns"] - entry_ts[r["args"]["ret"]]


@pytest.mark.parametrize("pie", ["-pie", "-no-pie"])
def test_records_match_what_the_target_did(
    build: Callable[..., Path], group: str, tmp_path: Path, pie: str,
) -> None:
    binary = build("calls", pie, "-fPIE" if pie == "-pie" else "-fno-pie")
    records, report = run_calls(binary, group, tmp_path, [WORK, RECURSE], exporter={"log_level": "debug"})
    check_work_records(records, report, group, binary)
    check_recursion(records, DEPTH)
    assert len(records) == 2 * THREADS * CALLS + 2 * THREADS * (DEPTH + 1)


def test_jq_parses_every_line(build: Callable[..., Path], group: str, tmp_path: Path) -> None:
    records, _ = run_calls(build("calls"), group, tmp_path, [WORK], threads=2, calls=20, depth=0)
    out = tmp_path / "out.jsonl"
    done = subprocess.run(["jq", "-c", "[.probe, .type, .args]", str(out)], capture_output=True, text=True,
                          check=True)
    assert len(done.stdout.splitlines()) == len(records) == 80
    strings = subprocess.run(["jq", "-r", "select(.type == \"entry\") | .args.s", str(out)], capture_output=True,
                             text=True, check=True).stdout
    assert 'a "quoted" word' in strings and "key=value x=1" in strings and "line one\nline two" in strings
