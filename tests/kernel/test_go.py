"""Go programs under ``return = true`` (RET-instruction probes, paired by goroutine), on the real kernel
with Debian's Go: goroutines that park inside probed calls and move between threads, recursion whose
stack grows (is copied) mid-call, a probed function that panics and is recovered by its caller. The
program's output and exit status are the same as without probes; every call gives one entry, one
return (unless it panicked) paired with its own entry, and the return value read at the RET."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ExporterProcess, build_config, read_jsonl, run_cli, toml_dumps, wait_for_lines
from tests.kernel.test_metrics import wait_scrape
from tests.prom import free_port
from uprobe_exporter.plan.elf import load_elf

GOROUTINES, CALLS, DEPTH = 16, 40, 1200  # 16 goroutines on 2 cores; 1200 frames of 2 KiB: ~19 stack copies
PROBES = ("handle", "deep", "may_panic", "unwind")
WALL_DRIFT_NS = 50_000
UNWIND_FRAMES, UNWIND_RETURNS = 7, 4  # unwind(6): frames 6..0; 0 panics, 3 recovers: 2, 1, 0 never return


def probes(binary: Path) -> list[dict[str, Any]]:
    # Go's register ABI: the first integer argument and result in %ax, the second in %bx
    return [{"name": name, "binary": str(binary), "function": f"main.{fn}", "return": True, "latency": True,
             "args": {"x": "%ax:s64"}, "return_args": {"r": "%ax:s64", "x_again": "%bx:s64"}}
            for name, fn in zip(PROBES, ("handle", "deep", "mayPanic", "unwind"), strict=True)]


def run_target(binary: Path) -> subprocess.CompletedProcess[str]:
    # more Ps than cores: a parked goroutine resumes on whichever thread runs a P then, so calls move
    # between threads even when another load keeps one of the two cores (one P idle) busy
    env = {**os.environ, "GOMAXPROCS": "8"}
    return subprocess.run([binary, str(GOROUTINES), str(CALLS), str(DEPTH)], capture_output=True, text=True,
                          timeout=120, check=False, env=env)


@pytest.mark.parametrize("reader", ["raw", "text"])
def test_go_calls_pair_by_goroutine(build_go: Callable[..., Path], group: str, tmp_path: Path, reader: str) -> None:
    binary = build_go("gocases")
    bare = run_target(binary)
    assert bare.returncode == 0, bare.stderr
    truth = json.loads(bare.stdout)
    out = tmp_path / "out.jsonl"
    cfg = tmp_path / "go.toml"
    port = free_port()
    cfg.write_text(toml_dumps(build_config(group, probes(binary), out, exporter={"reader": reader},
                                           metrics={"listen": f"127.0.0.1:{port}"})))
    unwinds = truth["unwind"] // UNWIND_FRAMES
    returns_of = {"handle": truth["handle"], "deep": truth["deep"], "may_panic": truth["may_panic"] - truth["panics"],
                  "unwind": unwinds * UNWIND_RETURNS}
    entries_of = {"handle": truth["handle"], "deep": truth["deep"], "may_panic": truth["may_panic"],
                  "unwind": truth["unwind"]}
    with ExporterProcess(cfg) as exporter:
        exporter.wait_ready()
        probed = run_target(binary)
        wait_for_lines(out, sum(returns_of.values()) + sum(entries_of.values()), timeout=60)
        s = wait_scrape(port, lambda s: s.value("uprobe_exporter_calls_evicted_total", reason="unwound")
                        >= truth["panics"] + unwinds * (UNWIND_FRAMES - UNWIND_RETURNS))
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    assert (probed.returncode, probed.stdout, probed.stderr) == (bare.returncode, bare.stdout, bare.stderr)
    records = read_jsonl(out)
    kinds = Counter((r["probe"], r["type"]) for r in records)
    assert kinds == {**{(p, "entry"): n for p, n in entries_of.items()},
                     **{(p, "return"): n for p, n in returns_of.items()}}
    # the kernel's hits: the return event's RET sites summed; calls left by a panic evicted as unwound
    group_of = f"{group}/"
    for p in PROBES:
        assert s.value("uprobe_probe_hits_total", probe=p, event=f"{group_of}{p}_entry") == entries_of[p], p
        assert s.value("uprobe_probe_hits_total", probe=p, event=f"{group_of}{p}_return") == returns_of[p], p
        assert s.value("uprobe_exporter_pending_calls", probe=p) == 0, p
        assert s.value("uprobe_call_duration_seconds_count", probe=p) == returns_of[p], p
    assert s.value("uprobe_exporter_calls_evicted_total", probe="may_panic", reason="unwound") == truth["panics"]
    assert s.value("uprobe_exporter_calls_evicted_total", probe="unwind", reason="unwound") == unwinds * 3
    assert s.value("uprobe_exporter_calls_evicted_total", reason="thread_exit") == 0
    assert s.value("uprobe_exporter_returns_without_entry_total") == 0
    assert sum(r["args"]["r"] for r in records if r["probe"] == "unwind" and r["args"].get("x_again") == 6) \
        == truth["unwind_sum"]
    # every return is paired with its own call's entry: same argument, entry at ts - duration (ts_ns is wall
    # time: its offset from the monotonic clock, refreshed each second, may move by microseconds meanwhile)
    entries: dict[tuple[str, int], list[int]] = {}
    for r in records:
        if r["type"] == "entry":
            entries.setdefault((r["probe"], r["args"]["x"]), []).append(r["ts_ns"])
    returns = [r for r in records if r["type"] == "return"]
    assert all(r["duration_ns"] >= 0 for r in returns)
    unmatched = [r for r in returns if not any(abs(r["ts_ns"] - r["duration_ns"] - ts) <= WALL_DRIFT_NS
                                               for ts in entries.get((r["probe"], r["args"]["x_again"]), []))]
    assert unmatched == []
    # the return value at the RET (%ax), against what the program computed
    assert sum(r["args"]["r"] for r in returns if r["probe"] == "handle") == truth["doubled"]
    handled = [r["args"]["x"] for r in records if r["probe"] == "handle" and r["type"] == "entry"]
    assert sum(handled) == truth["handle_sum"]
    assert sum(r["args"]["r"] for r in returns if r["probe"] == "may_panic") - truth["panics"] == truth["safe_sum"]
    # the goroutines moved between threads while parked inside handle
    threads_of = {r["args"]["x"]: r["tid"] for r in records if r["probe"] == "handle" and r["type"] == "entry"}
    moved = sum(threads_of[r["args"]["x_again"]] != r["tid"] for r in returns if r["probe"] == "handle")
    assert moved > 0
    # the entry is reported at the function's start (the probe is after the stack check)
    funcs = {r["probe"]: r["func"] for r in returns}
    assert {r["probe"]: r["ip"] for r in records if r["type"] == "entry"} == funcs


def test_go_check_places_entry_after_the_stack_check(build_go: Callable[..., Path], group: str, tmp_path: Path) -> None:
    binary = build_go("gocases")
    cfg = tmp_path / "go.toml"
    cfg.write_text(toml_dumps(build_config(group, probes(binary), tmp_path / "o.jsonl")))
    done = run_cli("check", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    deep = [x for x in done.stdout.splitlines() if x.startswith(f"p:{group}/deep_entry ")]
    assert len(deep) == 1 and "__g=%r14:x64 __g_hi=+8(%r14):x64 __ip_delta=\\18:u32" in deep[0]
    start = load_elf(binary).resolve("main.deep")
    by_offset = [{"name": "deep", "binary": str(binary), "offset": start}]  # the function's start, by offset
    cfg.write_text(toml_dumps(build_config(group, by_offset, tmp_path / "o.jsonl")))
    done = run_cli("check", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    assert f"p:{group}/deep_entry {binary}:{start + 18:#x} __comm=$comm __sp=%sp:x64 __ip_delta=\\18:u32" \
        in done.stdout.splitlines()
    bad = [{**probes(binary)[0], "return_args": {"r": "$retval"}}]
    cfg.write_text(toml_dumps(build_config(group, bad, tmp_path / "o.jsonl")))
    done = run_cli("check", "--config", str(cfg))
    assert done.returncode == 2 and "$retval is a uretprobe's" in done.stderr


GREETED = [b"gopher", b"", 'caf\u00e9 "quoted"'.encode(), b"x", b"nul\x00inside", b"\xff\xfe not utf-8", b"long" * 20]


@pytest.mark.parametrize("reader", ["raw", "text"])
def test_go_string_arguments_exactly(build_go: Callable[..., Path], group: str, tmp_path: Path, reader: str) -> None:
    """``%ax:gostring``: a Go string (pointer in %ax, length in %bx) sliced to its length, NUL and
    non-UTF-8 bytes included; ``:gostring`` reads up to 64 bytes, ``:gostring[128]`` up to 128. Results
    read at the RET from %ax (an int)."""
    binary = build_go("gocases")
    probe = {"name": "greet", "binary": str(binary), "function": "main.greet", "return": True,
             "args": {"name": "%ax:gostring[128]", "short": "%ax:gostring", "n": "%bx:s64"},
             "return_args": {"r": "%ax:s64"}}
    out = tmp_path / "out.jsonl"
    cfg = tmp_path / "go.toml"
    cfg.write_text(toml_dumps(build_config(group, [probe], out, exporter={"reader": reader})))
    with ExporterProcess(cfg) as exporter:
        exporter.wait_ready()
        done = run_target(binary)
        assert done.returncode == 0, done.stderr
        calls = json.loads(done.stdout)["greet"]
        wait_for_lines(out, 2 * calls)
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    records = read_jsonl(out)
    entries = [r["args"] for r in records if r["type"] == "entry"]
    expected = [GREETED[i % len(GREETED)] for i in range(calls)]
    assert [e["name"] for e in entries] == [b.decode("utf-8", "backslashreplace") for b in expected]
    assert [e["short"] for e in entries] == [b[:64].decode("utf-8", "backslashreplace") for b in expected]
    assert [e["n"] for e in entries] == [len(b) for b in expected]
    assert [r["args"]["r"] for r in records if r["type"] == "return"] == [len(b) for b in expected]
    assert all(r["duration_ns"] >= 0 for r in records if r["type"] == "return")


def test_replicas_pair_apart_and_parked_calls_go_when_their_process_exits(
    build_go: Callable[..., Path], group: str, tmp_path: Path,
) -> None:
    """Two copies of one Go program at once: their heaps (and so their goroutines' g) sit at the same
    addresses, yet each return pairs with an entry of its own process. Goroutines still inside main.park
    when their program exits leave pending calls that go (thread_exit) once the process is gone."""
    binary = build_go("gocases")
    parked = 3
    probes_ = [*probes(binary)[:2], {"name": "park", "binary": str(binary), "function": "main.park", "return": True}]
    out = tmp_path / "out.jsonl"
    port = free_port()
    cfg = tmp_path / "go.toml"
    cfg.write_text(toml_dumps(build_config(group, probes_, out, metrics={"listen": f"127.0.0.1:{port}"})))
    argv = [str(binary), str(GOROUTINES), str(CALLS), "300", str(parked)]
    with ExporterProcess(cfg) as exporter:
        exporter.wait_ready()
        replicas = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        reports = [json.loads(p.communicate(timeout=120)[0]) for p in replicas]
        assert [p.returncode for p in replicas] == [0, 0]
        calls = sum(r["handle"] + r["deep"] for r in reports)
        wait_for_lines(out, 2 * calls + 2 * parked, timeout=60)
        s = wait_scrape(port, lambda s: s.value("uprobe_exporter_calls_evicted_total", probe="park",
                                                reason="thread_exit") >= 2 * parked, timeout=30)
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    assert s.value("uprobe_exporter_calls_evicted_total", probe="park", reason="thread_exit") == 2 * parked
    assert s.value("uprobe_exporter_pending_calls", probe="park") == 0
    records = read_jsonl(out)
    assert len({r["pid"] for r in records}) == 2
    entries: dict[tuple[int, str, int], list[int]] = {}
    for r in records:
        if r["type"] == "entry" and r["probe"] != "park":
            entries.setdefault((r["pid"], r["probe"], r["args"]["x"]), []).append(r["ts_ns"])
    returns = [r for r in records if r["type"] == "return"]
    assert len(returns) == calls and all(r["duration_ns"] >= 0 for r in returns)
    unmatched = [r for r in returns if not any(abs(r["ts_ns"] - r["duration_ns"] - ts) <= WALL_DRIFT_NS
                                               for ts in entries.get((r["pid"], r["probe"], r["args"]["x_again"]), []))]
    assert unmatched == []
