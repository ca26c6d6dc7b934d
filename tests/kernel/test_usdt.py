"""USDT on the real kernel: a <sys/sdt.h> C target and Debian's own /usr/bin/python3.11.

Every record is compared with what the traced program says it did; semaphores are read from the
program's memory (/proc/<pid>/mem) before, during and after the exporter."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.helpers import ROOT, ExporterProcess, build_config, read_jsonl, run_cli, toml_dumps, wait_for_lines
from tests.kernel.test_metrics import scrape
from tests.prom import free_port
from tests.unit.twins import backend
from uprobe_exporter.backend import PYTHON as PYTHON_BACKEND
from uprobe_exporter.decode.rawpage import PageLayout, RawDecoder
from uprobe_exporter.decode.records import LostEvents, TraceRecord
from uprobe_exporter.kernel.session import ProbeSession
from uprobe_exporter.kernel.tracefs import Tracefs
from uprobe_exporter.pipeline.calls import event_infos
from uprobe_exporter.pipeline.pairing import Pairing
from uprobe_exporter.pipeline.raw import RawPipeline
from uprobe_exporter.pipeline.render import Renderer
from uprobe_exporter.plan.configfile import load_config_partial
from uprobe_exporter.plan.elf import read_stapsdt
from uprobe_exporter.plan.resolve import plan_events
from uprobe_exporter.plan.stapsdt import find_notes

PYTHON = Path("/usr/bin/python3.11")
ROUNDS = 5
PAGE = 4096


def read_u16(pid: int, address: int) -> int:
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(address)
        return int.from_bytes(f.read(2), "little")


def map_base(pid: int, path: Path) -> int:
    """The load address of ``path`` in ``pid`` (its first mapping: file offset 0)."""
    real = os.path.realpath(path)
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[5] == real and int(parts[2], 16) == 0:
            return int(parts[0].split("-")[0], 16)
    raise AssertionError(f"{real} is not mapped in {pid}")


class Target:
    """The C target, started before the exporter, driven round by round through its stdin."""

    def __init__(self, binary: Path) -> None:
        self.proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin: IO[str] = self.proc.stdin
        self.stdout: IO[str] = self.proc.stdout
        head = json.loads(self.stdout.readline())
        self.pid, self.semaphore = head["pid"], head["semaphore"]

    def go(self, rounds: int) -> list[dict[str, Any]]:
        self.stdin.write(f"go {rounds}\n")
        self.stdin.flush()
        out: list[dict[str, Any]] = []
        for line in self.stdout:
            if line.strip() == "done":
                return out
            out.append(json.loads(line))
        raise AssertionError("the target ended early")

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(10)
        self.stdout.close()


C_PROBES: list[dict[str, Any]] = [
    {"name": "args", "usdt": "t:args", "args": {"u8": "arg0", "s16": "arg1", "u32": "arg2", "s64": "arg3",
                                                "mem": "arg4", "const": "arg5", "text": "arg6:string",
                                                "round": "arg7"}},
    {"name": "regs", "usdt": "t:regs", "args": {"r8": "arg0", "r16": "arg1", "r32": "arg2", "r64": "arg3",
                                                "s8": "arg4"}},
    {"name": "multi", "usdt": "t:multi", "args": {"site": "arg0", "value": "arg1"}},
    {"name": "sem", "usdt": "t:sem", "args": {"round": "arg0", "twice": "arg1"}},
    {"name": "nest", "usdt": "t:enter", "args": {"depth": "arg0", "round": "arg1"}, "return_usdt": "t:leave",
     "return_args": {"depth": "arg0"}, "latency": True, "labels": ["depth"], "buckets": [0.0005, 0.002, 0.005, 0.1]},
]
C_FIELDS = {"args": ("u8", "s16", "u32", "s64", "mem", "const", "text", "round"),
            "regs": ("r8", "r16", "r32", "r64", "s8"), "multi": ("site", "value"), "sem": ("round", "twice")}


@pytest.fixture
def target(build: Callable[..., Path]) -> Iterator[Target]:
    t = Target(build("usdt"))
    yield t
    t.close()


def write_config(path: Path, group: str, out: Path, binary: Path, probes: list[dict[str, Any]], **kw: Any) -> Path:
    path.write_text(toml_dumps(build_config(group, [{"binary": str(binary), **p} for p in probes], out, **kw)))
    return path


def check_pairs(records: list[dict[str, Any]], probe: str) -> int:
    """Each return closes the innermost open entry of its thread: its duration is exactly that."""
    stacks: dict[int, list[dict[str, Any]]] = defaultdict(list)
    paired = 0
    for r in sorted(records, key=lambda r: r["ts_ns"]):
        if r["probe"] != probe:
            continue
        if r["type"] == "entry":
            stacks[r["tid"]].append(r)
            continue
        entry = stacks[r["tid"]].pop()
        assert r["duration_ns"] == r["ts_ns"] - entry["ts_ns"]
        assert "ip" in r and "func" not in r and "ret_ip" not in r  # a USDT return carries its site
        paired += 1
    assert not any(stacks.values())
    return paired


@pytest.mark.parametrize("reader", ["raw", "text"])
def test_c_target_every_argument_form_sites_semaphores_and_pairing(
    target: Target, build: Callable[..., Path], group: str, tmp_path: Path, reader: str,
) -> None:
    binary = build("usdt")
    out, port = tmp_path / "out.jsonl", free_port()
    config = write_config(tmp_path / "c.toml", group, out, binary, C_PROBES,
                          metrics={"listen": f"127.0.0.1:{port}"}, exporter={"reader": reader})
    before = target.go(1)  # no tracer: the semaphore-guarded probes are skipped by the program itself
    assert read_u16(target.pid, target.semaphore) == 0
    assert not [r for r in before if r["probe"] in ("sem",)]
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        assert read_u16(target.pid, target.semaphore) == 1  # the kernel counts us in the running process
        report = target.go(ROUNDS)
        expected = sum(1 for r in report if r["probe"] in ("args", "regs", "multi", "sem", "enter", "leave"))
        wait_for_lines(out, expected)
        metrics = scrape(port)
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    assert read_u16(target.pid, target.semaphore) == 0  # gone with us: the program stops paying
    records = read_jsonl(out)
    assert len(records) == expected
    for probe, fields in C_FIELDS.items():
        got = Counter(tuple(r["args"][f] for f in fields) for r in records if r["probe"] == probe)
        want = Counter(tuple(r[f] for f in fields) for r in report if r["probe"] == probe)
        assert got == want, probe
        assert sum(want.values()) == ROUNDS * (2 if probe == "multi" else 1)
    multi_ips = {(r["args"]["site"], r["ip"]) for r in records if r["probe"] == "multi"}
    assert len(multi_ips) == 2 and len({ip for _, ip in multi_ips}) == 2  # one event, two sites
    # nest: entries (depth, round), returns (depth), paired innermost first; durations >= the sleeps
    nest_entries = [r for r in records if r["probe"] == "nest" and r["type"] == "entry"]
    assert Counter((r["args"]["depth"], r["args"]["round"]) for r in nest_entries) == Counter(
        (r["depth"], r["round"]) for r in report if r["probe"] == "enter")
    assert check_pairs(records, "nest") == 3 * ROUNDS
    slept = {0: 1e6, 1: 3e6, 2: 6e6}
    for r in records:
        if r["probe"] == "nest" and r["type"] == "return":
            assert r["duration_ns"] >= slept[r["args"]["depth"]]
    for depth in range(3):
        assert metrics.value("uprobe_call_duration_seconds_count", probe="nest", depth=str(depth)) == ROUNDS
    assert metrics.value("uprobe_probe_hits_total", probe="multi") == 2 * ROUNDS  # both sites' lines summed
    assert metrics.value("uprobe_exporter_events_registered") == 6
    assert metrics.value("uprobe_exporter_returns_without_entry_total", probe="nest") == 0


def test_check_prints_one_line_per_site_with_ref_ctr_offset(build: Callable[..., Path], tmp_path: Path) -> None:
    binary = build("usdt")
    config = write_config(tmp_path / "c.toml", "g", tmp_path / "o", binary, C_PROBES)
    done = run_cli("check", "--config", str(config))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len([x for x in lines if x.startswith("p:g/multi_entry ")]) == 2
    info = read_stapsdt(binary)
    sem = find_notes(info.notes, "t:sem", str(binary))[0]
    probes = next(s for s in info.segments if s.writable)
    assert any(re.fullmatch(rf"p:g/sem_entry {binary}:0x[0-9a-f]+\({sem.semaphore - probes.vaddr + probes.offset:#x}\)"
                            r" __comm=\$comm __sp=\\0:x64 round=-?\d+\(%bp\):s32 twice=-?\d+\(%bp\):s64", x)
               for x in lines), lines
    assert "p:g/nest_return" in done.stdout and "r:" not in done.stdout
    listing = run_cli("usdt", str(binary), "t:*")
    assert listing.returncode == 0
    assert re.search(r"^t:multi sites=0x[0-9a-f]+,0x[0-9a-f]+ semaphore=- args=arg0=-4@", listing.stdout, re.M)


@pytest.mark.parametrize(("probe", "message"), [
    ({"usdt": "t:nope", "args": {"x": "arg0"}},
     r"probes\[0\] \"p\"\.usdt: USDT 't:nope' not found in .*; did you mean"),
    ({"usdt": "t:sem", "args": {"x": "arg2"}}, r"probes\[0\] \"p\"\.args\.x: 'arg2': USDT t:sem has 2 arguments"),
    ({"usdt": "t:sem", "args": {"x": "argv"}}, r"probes\[0\] \"p\"\.args\.x: 'argv' must be argN"),
    ({"usdt": "t:ro"},
     r"probes\[0\] \"p\"\.usdt: USDT t:ro: its semaphore at 0x[0-9a-f]+ is not in a writable segment"),
    ({"usdt": "t:sem", "return": True}, r"probes\[0\] \"p\"\.return: a USDT is not a function"),
])
def test_bad_usdt_input_is_one_line_exit_2_nothing_registered(
    build: Callable[..., Path], group: str, tmp_path: Path, tracefs: Tracefs, probe: dict[str, Any], message: str,
) -> None:
    binary = build("usdt")
    config = write_config(tmp_path / "c.toml", group, tmp_path / "o", binary, [{"name": "p", **probe}])
    for command in ("check", "run"):
        done = run_cli(command, "--config", str(config))
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and re.search(message, lines[0]), done.stderr
        assert not [e for e in tracefs.read_uprobe_events() if e.group == group]
        assert not tracefs.instance(group).exists()


def test_semaphore_back_to_zero_after_sigkill_and_cleanup(
    target: Target, build: Callable[..., Path], group: str, tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "c.toml", group, tmp_path / "out.jsonl", build("usdt"), C_PROBES[3:4])
    exporter = ExporterProcess(config)
    exporter.wait_ready()
    assert read_u16(target.pid, target.semaphore) == 1
    exporter.stop(signal.SIGKILL)
    assert read_u16(target.pid, target.semaphore) == 1  # the kernel keeps our enabled events: still counted
    done = run_cli("cleanup", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert read_u16(target.pid, target.semaphore) == 0


def test_cleanup_after_sigkill_removes_every_event_with_several_sites(
    build: Callable[..., Path], group: str, tmp_path: Path, tracefs: Tracefs,
) -> None:
    """``uprobe_events`` lists an event with several probes (the inlined USDT) once per site: cleanup
    removes it once (a second removal failed with ENOENT)."""
    config = write_config(tmp_path / "c.toml", group, tmp_path / "out.jsonl", build("usdt"), C_PROBES)
    exporter = ExporterProcess(config)
    exporter.wait_ready()
    listed = [e.event for e in tracefs.read_uprobe_events() if e.group == group]
    assert len(listed) > len(set(listed)), listed  # some event has several sites
    exporter.stop(signal.SIGKILL)
    done = run_cli("cleanup", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert not [e for e in tracefs.read_uprobe_events() if e.group == group]
    assert not tracefs.instance(group).exists()


# --- the real python3.11 -------------------------------------------------------------------------

# Debian's CPython 3.11 fires python:function__return for every frame (each yield too), but
# python:function__entry only while a profile or trace function is set (cframe.use_tracing; CPython
# https://github.com/python/cpython/issues/98894, restored in 3.15). The script runs a first batch as it is,
# then sets the C profiler of cProfile (_lsprof: no Python frames of its own) and runs a second batch.
PY_SCRIPT = r"""
import gc, json, sys, time
calls = dict.fromkeys(["outer", "middle", "leaf", "gen"], 0)  # a plain dict: no Python-level method runs
def leaf(n):
    calls["leaf"] += 1
    time.sleep(0.002)
    return n
def middle(n):
    calls["middle"] += 1
    return leaf(n) + leaf(n)
def outer(n):
    calls["outer"] += 1
    time.sleep(0.001)
    return middle(n)
def gen():
    for i in range(3):
        calls["gen"] += 1
        yield leaf(i)
    calls["gen"] += 1
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    rounds, profile = map(int, line.split())
    if profile:
        import _lsprof
        _lsprof.Profiler().enable()
    for k in calls:
        calls[k] = 0
    for i in range(rounds):
        outer(i)
        list(gen())
    print(json.dumps({"calls": calls, "collected": gc.collect()}), flush=True)
"""
PY_PROBES: list[dict[str, Any]] = [
    {"name": "pycall", "usdt": "python:function__entry",
     "args": {"file": "arg0:string", "func": "arg1:string", "line": "arg2"},
     "return_usdt": "python:function__return", "return_args": {"func": "arg1:string", "file": "arg0:string"},
     "latency": True, "labels": ["func"], "buckets": [0.001, 0.0025, 0.005, 0.1, 1.0]},
    {"name": "gc", "usdt": "python:gc__start", "args": {"generation": "arg0"},
     "return_usdt": "python:gc__done", "return_args": {"collected": "arg0"}, "latency": True},
]


@pytest.fixture
def python_script(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    if not PYTHON.exists():
        pytest.fail(f"{PYTHON} (Debian's python3.11, installed by .ci/run) is missing")
    script = tmp_path / "workload.py"
    script.write_text(PY_SCRIPT)
    proc = subprocess.Popen([PYTHON, "-S", str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"ready": True}
    yield proc, script
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    proc.wait(10)
    proc.stdout.close()


def semaphores(pid: int) -> dict[str, int]:
    """python3.11's semaphores in the running process (Debian builds it non-PIE: the note's addresses are
    the process's own; a PIE build would add its load address)."""
    info = read_stapsdt(PYTHON)
    base = map_base(pid, PYTHON) - min(s.vaddr for s in info.segments)
    return {n: read_u16(pid, base + find_notes(info.notes, f"python:{n}", str(PYTHON))[0].semaphore)
            for n in ("function__entry", "function__return", "gc__start", "gc__done", "line")}


def run_rounds(proc: subprocess.Popen[str], rounds: int, profile: bool = True) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{rounds} {int(profile)}\n")
    proc.stdin.flush()
    account: dict[str, Any] = json.loads(proc.stdout.readline())
    return account


def test_python311_function_latency_and_gc_from_a_running_process(
    python_script: tuple[subprocess.Popen[str], Path], group: str, tmp_path: Path,
) -> None:
    proc, script = python_script
    assert set(semaphores(proc.pid).values()) == {0}
    rounds = 7
    out, port = tmp_path / "out.jsonl", free_port()
    # other python3.11 processes on the host fire too (a uprobe is per file): the kernel keeps our script's
    only = f"common_pid == {proc.pid}"
    probes = [{**p, "filter": only, "return_filter": only} for p in PY_PROBES]
    config = write_config(tmp_path / "py.toml", group, out, PYTHON, probes, metrics={"listen": f"127.0.0.1:{port}"})
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        # started before us, the running interpreter now fires its probes (the kernel set its semaphores)
        assert semaphores(proc.pid) == {"function__entry": 1, "function__return": 1, "gc__start": 1, "gc__done": 1,
                                        "line": 0}
        first = run_rounds(proc, 3, profile=False)
        time.sleep(0.3)
        between = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        account = run_rounds(proc, rounds)
        time.sleep(0.5)
        metrics = scrape(port)
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    assert set(semaphores(proc.pid).values()) == {0}
    calls = account["calls"]
    assert calls == {"outer": rounds, "middle": rounds, "leaf": 5 * rounds, "gen": 4 * rounds}
    records = read_jsonl(out)
    assert {r["tid"] for r in records} == {proc.pid}
    boundary = between + time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # ts_ns is wall time
    ours = [r for r in records if r["probe"] == "pycall" and r["args"]["file"] == str(script)]
    before = [r for r in ours if r["ts_ns"] < boundary]
    after = [r for r in ours if r["ts_ns"] >= boundary]
    assert before and after
    # first batch, no profiler: every return, no entry, nothing paired (no return closes a foreign entry)
    assert Counter(r["args"]["func"] for r in before if r["type"] == "return") == first["calls"]
    assert not [r for r in before if r["type"] == "entry" or "duration_ns" in r]
    # second batch: every entry and return, as the script counted them
    entries = [r for r in after if r["type"] == "entry"]
    returns = [r for r in after if r["type"] == "return"]
    assert Counter(r["args"]["func"] for r in entries) == calls
    assert Counter(r["args"]["func"] for r in returns) == calls
    source = PY_SCRIPT.split("\n")  # line 1 is source[0]
    def_line = {f: 1 + next(i for i, x in enumerate(source) if x.startswith(f"def {f}(")) for f in calls}
    # a call starts at its def line; a generator resumed reports the line it resumes at
    assert {(r["args"]["func"], r["args"]["line"]) for r in entries if r["args"]["func"] != "gen"} == {
        (f, def_line[f]) for f in ("outer", "middle", "leaf")}
    # nested calls share one C frame (and stack pointer): each return closes the innermost entry
    stacks: list[dict[str, Any]] = []
    for r in sorted((r for r in records if r["probe"] == "pycall"), key=lambda r: r["ts_ns"]):
        if r["type"] == "entry":
            stacks.append(r)
        elif stacks and stacks[-1]["args"]["func"] == r["args"]["func"]:
            entry = stacks.pop()
            assert r["duration_ns"] == r["ts_ns"] - entry["ts_ns"]
        else:
            assert "duration_ns" not in r
    assert all("duration_ns" in r for r in returns)
    durations: dict[str, list[int]] = defaultdict(list)
    for r in returns:
        durations[r["args"]["func"]].append(r["duration_ns"])
    assert min(durations["leaf"]) >= 2_000_000 and min(durations["middle"]) >= 4_000_000
    assert min(durations["outer"]) >= 5_000_000  # 1 ms, then two leaves of 2 ms
    assert sorted(durations["gen"])[rounds] >= 2_000_000  # three of four resumptions run a leaf
    for func, n in calls.items():
        assert metrics.value("uprobe_call_duration_seconds_count", probe="pycall", func=func) == n
        below = sum(1 for d in durations[func] if d <= 2_500_000)
        assert metrics.value("uprobe_call_duration_seconds_bucket", probe="pycall", func=func, le="0.0025") == below
    assert metrics.value("uprobe_exporter_returns_without_entry_total", probe="pycall") == len(
        [r for r in records if r["probe"] == "pycall" and r["type"] == "return" and "duration_ns" not in r])
    gcs = [r for r in records if r["probe"] == "gc"]
    gc_returns = [r for r in gcs if r["type"] == "return"]
    assert check_pairs(records, "gc") == len(gc_returns) >= 1
    assert {"generation": 2} in [r["args"] for r in gcs if r["type"] == "entry"]  # gc.collect(): a full one
    assert gc_returns[-1]["args"]["collected"] == account["collected"]
    assert metrics.value("uprobe_call_duration_seconds_count", probe="gc") == len(gc_returns)


def readme_recipe() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- python-recipe -->\s*```toml\n(.*?)```", text, re.S)
    assert m, "the README's Python recipe (marked <!-- python-recipe -->) is missing"
    return m.group(1)


def test_the_readme_python_recipe_gives_per_function_histograms(
    python_script: tuple[subprocess.Popen[str], Path], group: str, tmp_path: Path,
) -> None:
    proc, _ = python_script
    port = free_port()
    recipe = readme_recipe()
    config = tmp_path / "recipe.toml"
    # pasted as it is; only our own group, instance, port and output are set around it
    config.write_text(f'[exporter]\ngroup = "{group}"\ninstance = "{group}"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
                      f'[output.jsonl]\npath = "{tmp_path / "out.jsonl"}"\n' + recipe)
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        run_rounds(proc, 3)  # with the profiler set (function__entry fires only then on 3.11)
        time.sleep(0.5)
        metrics = scrape(port)
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    for func, n in {"outer": 3, "middle": 3, "leaf": 15}.items():
        counts = [v for ls, v in metrics.samples("uprobe_call_duration_seconds_count") if ls.get("func") == func]
        assert sum(counts) >= n, (func, metrics.samples("uprobe_call_duration_seconds_count"))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_usdt_pages_give_the_same_output_by_records_and_by_emitters(
    target: Target, build: Callable[..., Path], group: str, tmp_path: Path, tracefs: Tracefs, native: bool,
) -> None:
    """The pages the kernel wrote for the C target's USDT probes (sites, a USDT return with ip, labels
    from arguments, matched returns) through the record path and through the emitters: the same bytes,
    counts, pairs and histograms."""
    binary = build("usdt")
    config = load_config_partial(str(write_config(tmp_path / "c.toml", group, tmp_path / "o", binary, C_PROBES)))[0]
    events = plan_events(config)
    instance = tracefs.instance(group)
    pages: list[tuple[bytes, int]] = []
    with ProbeSession(tracefs, instance, group, events, 1024) as session:
        target.go(ROUNDS)
        session.stop_recording()
        for cpu in instance.cpus():
            raw = instance.root / "per_cpu" / f"cpu{cpu}" / "trace_pipe_raw"
            fd = os.open(raw, os.O_RDONLY | os.O_NONBLOCK)
            try:
                while True:
                    try:
                        page = os.read(fd, PAGE)
                    except BlockingIOError:
                        break
                    if not page:
                        break
                    pages.append((page, cpu))
            finally:
                os.close(fd)
        formats = list(session.formats.values())
        layout = PageLayout.parse(instance.read_header_page())
    assert any(f.ends_call for f in formats)
    made = []
    for twins in (PYTHON_BACKEND, backend(native)):
        infos = event_infos(events, config.probes)
        made.append(RawPipeline(infos, config.probes, Renderer(10**18), Pairing(twin=twins.pairing), twins, 100,
                                lambda tid: tid))
    by_record, by_emitter = made
    records: list[TraceRecord | LostEvents] = []
    decoder = RawDecoder.for_formats(layout, formats)
    emitters = by_emitter.emitters(formats)
    located: list[Any] = []
    lost: list[LostEvents] = []
    locator = RawDecoder(layout, emitters, by_emitter.decode_errors, by_emitter.backend.walk)
    for page, cpu in pages:
        decoder.decode(page, cpu, records)
        locator.locate(page, cpu, located, lost)
    ordered = sorted((r for r in records if isinstance(r, TraceRecord)), key=lambda r: r.ts_ns)
    a = by_record.process_items(list(ordered))
    b = by_emitter.process_located(sorted(located, key=lambda x: x[0]), lost)
    assert a is not None and b is not None and a[1] > 0
    assert b == a
    hists = [{name: {k: (list(h.counts), h.sum_ns) for k, h in ph.series.items()} for name, ph in p.histograms.items()}
             for p in made]
    assert hists[0] == hists[1] and hists[0]["nest"]
    assert by_emitter.statistics() == by_record.statistics()
    assert by_emitter.pairing.statistics() == by_record.pairing.statistics()
    assert by_record.pairing.statistics().paired == 3 * ROUNDS
    lines = [json.loads(x) for x in a[0].splitlines()]
    nest_returns = [r for r in lines if r["probe"] == "nest" and r["type"] == "return"]
    assert {("ip" in r, "func" in r) for r in nest_returns} == {(True, False)}


def test_a_site_probed_with_another_semaphore_offset_is_explained(
    build: Callable[..., Path], group: str, tmp_path: Path, tracefs: Tracefs,
) -> None:
    binary = build("usdt")
    config = write_config(tmp_path / "c.toml", group, tmp_path / "o", binary, C_PROBES[3:4])
    line = next(x for x in run_cli("check", "--config", str(config)).stdout.splitlines() if "sem_entry" in x)
    m = re.search(r":(0x[0-9a-f]+)\((0x[0-9a-f]+)\)", line)
    assert m
    other = f"{group}_other"  # another tracer's probe on the same site, with another semaphore offset
    tracefs.write_uprobe_events(f"p:{other}/sem {binary}:{m[1]}({int(m[2], 16) + 2:#x})")
    try:
        done = run_cli("run", "--config", str(config))
    finally:
        tracefs.write_uprobe_events(f"-:{other}/sem")
    assert done.returncode == 2, done.stderr
    assert re.search(rf"probes\[0\] \"sem\": .*already probed by {other}/sem with 0x[0-9a-f]+ as its semaphore offset",
                     done.stderr), done.stderr
    assert not [e for e in tracefs.read_uprobe_events() if e.group == group]
    assert not tracefs.instance(group).exists()
