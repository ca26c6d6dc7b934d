"""``return_via = "ret_instructions"`` (a `p:` probe on each RET of the function) on C targets gives the
same records as a uretprobe, recursion included; misplaced offsets and unsafe functions are refused."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ExporterProcess, build_config, read_jsonl, run_cli, toml_dumps, wait_for_lines
from uprobe_exporter.kernel.session import ProbeSession
from uprobe_exporter.kernel.tracefs import Tracefs
from uprobe_exporter.plan.config import parse_config
from uprobe_exporter.plan.elf import load_elf, read_function_code
from uprobe_exporter.plan.resolve import plan_events

THREADS, CALLS, DEPTH = 3, 40, 12


def run_calls(binary: Path, group: str, tmp_path: Path, via: str, reader: str) -> tuple[list[dict[str, Any]], str]:
    probes = [
        {"name": "work", "binary": str(binary), "function": "work", "return": True, "return_via": via,
         "args": {"a": "%di:s32"}, "return_args": {"r": "%ax:s64" if via == "ret_instructions" else "$retval:s64"}},
        {"name": "recurse", "binary": str(binary), "function": "recurse", "return": True, "return_via": via,
         "args": {"n": "%di:s32"}},
    ]
    out = tmp_path / f"{via}_{reader}.jsonl"
    cfg = tmp_path / f"{via}_{reader}.toml"
    cfg.write_text(toml_dumps(build_config(group, probes, out, exporter={"reader": reader})))
    with ExporterProcess(cfg) as exporter:
        exporter.wait_ready()
        done = subprocess.run([binary, str(THREADS), str(CALLS), str(DEPTH)], capture_output=True, text=True,
                              check=True, timeout=60)
        expected = 2 * THREADS * (CALLS + DEPTH + 1)
        wait_for_lines(out, expected)
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    records = read_jsonl(out)
    assert len(records) == expected, exporter.stderr
    return records, done.stdout


def check_pairs(records: list[dict[str, Any]]) -> None:
    """Every return has the duration of the innermost open entry of its thread and probe (LIFO by hand)."""
    open_: dict[tuple[str, int], list[int]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r["ts_ns"]):
        key = (r["probe"], r["tid"])
        if r["type"] == "entry":
            open_[key].append(r["ts_ns"])
        else:
            assert r["duration_ns"] == r["ts_ns"] - open_[key].pop() >= 0, r
    assert not any(open_.values())


def comparable(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What does not depend on the run: no times, no thread ids (-no-pie: addresses are the same)."""
    return sorted((r["probe"], r["type"], r["comm"], r.get("ip"), r.get("func"), r.get("ret_ip"),
                   json.dumps(r["args"], sort_keys=True), "duration_ns" in r) for r in records)


@pytest.mark.parametrize("reader", ["raw", "text"])
def test_ret_instructions_give_the_records_of_a_uretprobe(
    build: Callable[..., Path], group: str, tmp_path: Path, reader: str,
) -> None:
    binary = build("calls", "-no-pie")
    uret, _ = run_calls(binary, group, tmp_path, "uretprobe", reader)
    rets, out2 = run_calls(binary, group, tmp_path, "ret_instructions", reader)
    check_pairs(uret)
    check_pairs(rets)
    truth = [json.loads(c) for c in out2.splitlines()]
    # the return value at the RET: %ax, as $retval at the uretprobe
    assert sorted(r["args"]["r"] for r in rets if r["probe"] == "work" and r["type"] == "return") == sorted(
        c["ret"] for c in truth if c["fn"] == "work")
    assert comparable(uret) == comparable(rets)
    depths = sorted(r["args"]["n"] for r in rets if r["probe"] == "recurse" and r["type"] == "entry")
    assert depths == sorted(list(range(DEPTH + 1)) * THREADS)


def test_ret_instructions_listing_and_refusals(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    binary = build("calls")
    info = load_elf(binary)
    work = info.symbols["work"][0]
    code = read_function_code(info, work)
    start = info.file_offset(work.value)
    assert start is not None
    probe = {"name": "work", "binary": str(binary), "function": "work", "return": True,
             "return_via": "ret_instructions"}
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_dumps(build_config(group, [probe], tmp_path / "o.jsonl")))
    done = run_cli("check", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    rets = [i.offset for i in code.instructions if i.is_ret]
    lines = [x for x in done.stdout.splitlines() if x.startswith("p:") and "work_return" in x]
    assert [x.split()[1] for x in lines] == [f"{binary}:{start + r:#x}" for r in rets]
    assert all("__sp_ret=%sp:x64 __ret_addr=+0(%sp):x64 __ip_delta=" in x for x in lines)
    # $retval is a uretprobe's
    bad = {**probe, "return_args": {"r": "$retval"}}
    cfg.write_text(toml_dumps(build_config(group, [bad], tmp_path / "o.jsonl")))
    done = run_cli("check", "--config", str(cfg))
    assert done.returncode == 2
    assert ("probes[0] \"work\".return_args.r: '$retval': $retval is a uretprobe's; at a RET instruction the return "
            "value is in %ax") in done.stderr
    # an offset inside an instruction: refused, naming the nearest instruction starts
    second = code.instructions[1]
    inside = {"name": "mid", "binary": str(binary), "offset": start + second.offset + 1}
    cfg.write_text(toml_dumps(build_config(group, [inside], tmp_path / "o.jsonl")))
    done = run_cli("check", "--config", str(cfg))
    assert done.returncode == 2
    nxt = code.instructions[2].offset
    assert done.stderr.splitlines() == [
        'uprobe-exporter: error: probes[0] "mid".offset: '
        f"{start + second.offset + 1:#x} is work+{second.offset + 1:#x}, "
        f"inside the instruction '{second.text}': a breakpoint there corrupts the program; the nearest instructions "
        f"start at work+{second.offset:#x} (file offset {start + second.offset:#x}) and work+{nxt:#x} "
        f"(file offset {start + nxt:#x})"]
    within = {"name": "mid", "binary": str(binary), "function": f"work+{second.offset + 1:#x}"}
    cfg.write_text(toml_dumps(build_config(group, [within], tmp_path / "o.jsonl")))
    done = run_cli("check", "--config", str(cfg))
    assert done.returncode == 2 and f"work+{second.offset + 1:#x} is work+{second.offset + 1:#x}, inside" in done.stderr
    ok = {"name": "mid", "binary": str(binary), "function": f"work+{second.offset:#x}"}
    cfg.write_text(toml_dumps(build_config(group, [ok], tmp_path / "o.jsonl")))
    assert run_cli("check", "--config", str(cfg)).returncode == 0
    assert [e for e in tracefs.read_uprobe_events() if e.group == group] == []


def test_ret_instruction_returns_added_at_run_time_end_calls_as_at_start(
    build: Callable[..., Path], group: str, tmp_path: Path, tracefs: Tracefs,
) -> None:
    """Returns seen at RET instructions are `p:` events: their format says nothing of ending a call. The
    session marks them so whether they are registered at start or added at run time (a discovered file:
    ProbeSession.add), else their records would be paired as entries."""
    binary = build("calls")
    probes = [{"name": "work", "binary": str(binary), "function": "work", "return": True,
               "return_via": "ret_instructions"}]
    config = parse_config(build_config(group, probes, tmp_path / "o.jsonl"))
    events = plan_events(config)
    returns = {e.event for e in events if e.is_return}
    assert returns and all(e.ends_call for e in events if e.is_return)
    instance = tracefs.instance(group)
    with ProbeSession(tracefs, instance, group, events, 1024) as session:
        at_start = {name: f.ends_call for name, f in session.formats.items()}
    with ProbeSession(tracefs, instance, group, [], 1024) as session:
        added = {name: f.ends_call for name, f in session.add(events).items()}
    assert at_start == added == {e.event: e.event in returns for e in events}
