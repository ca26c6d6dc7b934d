"""Live benchmark on the real kernel (root): the exporter against `cat trace_pipe > file`.

    python benchmarks/bench_live.py [--seconds 5] [--targets step,push] [--python PYTHON]

For each target (a function starting with an instruction the kernel single-steps, and one starting
with `push`, which it emulates), entry + return probes, three runs of the same length:
  none     probes enabled in an instance, nobody reading (the target's speed with probes alone)
  exporter uprobe-exporter run, JSON lines to a file
  cat      cat instances/<name>/trace_pipe > file
and prints, per run: calls/s of the target, events generated (uprobe_profile hits), records emitted,
events lost in the kernel (per-CPU stats), whether they add up exactly, reader CPU µs per record, the
target's slowdown against nobody reading, and the exporter/cat ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uprobe_exporter.config import ProbeConfig  # noqa: E402
from uprobe_exporter.elf import load_elf  # noqa: E402
from uprobe_exporter.probes import ResolvedProbe, build_events  # noqa: E402
from uprobe_exporter.session import ProbeSession  # noqa: E402
from uprobe_exporter.tracefs import Tracefs, find_tracefs  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
BUFFER_KB = 4096


@dataclass
class Run:
    name: str
    calls: int
    seconds: float
    hits: int
    records: int
    lost: int
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def adds_up(self) -> bool:
        return self.hits == self.records + self.lost


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def hits_of(tracefs: Tracefs, path: str, events: list[str]) -> int:
    return sum(e.hits for e in tracefs.read_uprobe_profile() if e.path == path and e.event in events)


def run_target(binary: Path, mode: str, seconds: float) -> tuple[int, float]:
    out = subprocess.run([binary, mode, str(seconds)], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1])


def wait_quiet(path: Path, settle: float = 0.5) -> None:
    """Wait until ``path`` stops growing (the reader has drained the backlog)."""
    size, since = -1, time.monotonic()
    while time.monotonic() - since < settle:
        now = path.stat().st_size if path.exists() else 0
        if now != size:
            size, since = now, time.monotonic()
        time.sleep(0.05)


def count_records(path: Path) -> int:
    """Lines that are records: not the "CPU:N [LOST M EVENTS]" markers cat also writes."""
    with path.open("rb") as f:
        return sum(1 for line in f if not line.startswith(b"CPU:"))


def probes_for(binary: Path, mode: str) -> list[ProbeConfig]:
    return [ProbeConfig(name="work", binary=str(binary), function=f"work_{mode}", args=(("x", "%di:s64"),),
                        return_probe=True, return_args=(("ret", "$retval:s64"),))]


def session(tracefs: Tracefs, group: str, binary: Path, mode: str) -> ProbeSession:
    info = load_elf(binary)
    events = [e for p in probes_for(binary, mode)
              for e in build_events(ResolvedProbe(p, str(binary), info.resolve(p.function)), group)]
    return ProbeSession(tracefs, tracefs.instance(group), group, events, BUFFER_KB)


def run_none(tracefs: Tracefs, binary: Path, mode: str, seconds: float) -> Run:
    group = f"bench_none_{mode}_{os.getpid()}"
    with session(tracefs, group, binary, mode) as s:
        calls, elapsed = run_target(binary, mode, seconds)
        hits = hits_of(tracefs, str(binary), [e.event for e in s.events])
        lost = s.instance.read_lost()
        kept = sum(s.instance.read_stats(c).get("entries", 0) for c in s.instance.cpus())
    return Run("none", calls, elapsed, hits, kept, lost, 0.0)


def run_cat(tracefs: Tracefs, binary: Path, mode: str, seconds: float, tmp: Path) -> Run:
    group = f"bench_cat_{mode}_{os.getpid()}"
    out = tmp / f"cat_{mode}.txt"
    with session(tracefs, group, binary, mode) as s, out.open("wb") as f:
        cat = subprocess.Popen(["cat", str(s.instance.trace_pipe)], stdout=f)
        time.sleep(0.3)
        cpu0 = cpu_seconds(cat.pid)
        calls, elapsed = run_target(binary, mode, seconds)
        wait_quiet(out)
        cpu = cpu_seconds(cat.pid) - cpu0
        hits = hits_of(tracefs, str(binary), [e.event for e in s.events])
        lost = s.instance.read_lost()
        cat.send_signal(signal.SIGTERM)
        cat.wait()
    return Run("cat", calls, elapsed, hits, count_records(out), lost, cpu)


def run_exporter(binary: Path, mode: str, seconds: float, tmp: Path, python: str) -> Run:
    group = f"bench_exp_{mode}_{os.getpid()}"
    out = tmp / f"exporter_{mode}.jsonl"
    out.unlink(missing_ok=True)  # the sink appends
    config = tmp / "config.toml"
    config.write_text(
        f'[exporter]\ngroup = "{group}"\ninstance = "{group}"\nbuffer_size_kb = {BUFFER_KB}\n'
        f'[output.jsonl]\npath = "{out}"\n[metrics]\nenabled = false\n'
        f'[[probes]]\nname = "work"\nbinary = "{binary}"\nfunction = "work_{mode}"\n'
        f'args = {{ x = "%di:s64" }}\nreturn = true\nreturn_args = {{ ret = "$retval:s64" }}\n')
    exporter = subprocess.Popen([python, "-m", "uprobe_exporter", "run", "--config", str(config)], cwd=ROOT,
                                stderr=subprocess.PIPE, text=True)
    assert exporter.stderr is not None
    for line in exporter.stderr:
        if "; reading" in line:
            break
    else:
        raise SystemExit(f"exporter did not start (exit {exporter.wait()})")
    tracefs = Tracefs(find_tracefs("auto"))
    cpu0 = cpu_seconds(exporter.pid)
    calls, elapsed = run_target(binary, mode, seconds)
    wait_quiet(out)
    cpu = cpu_seconds(exporter.pid) - cpu0
    hits = hits_of(tracefs, str(binary), ["work_entry", "work_return"])
    exporter.send_signal(signal.SIGTERM)
    log = exporter.stderr.read()
    exporter.wait()
    m = re.search(r"(\d+) lost in the kernel", log)
    lost = int(m[1]) if m else -1
    return Run("exporter", calls, elapsed, hits, count_records(out), lost, cpu)


def report(mode: str, runs: dict[str, Run]) -> None:
    none = runs["none"]
    print(f"\n== target '{mode}': entry + return probes, {none.seconds:.1f} s per run ==")
    print(f"{'run':9} {'calls/s':>10} {'events':>10} {'records':>10} {'lost':>10} {'loss%':>6} "
          f"{'adds up':>7} {'µs CPU/rec':>10} {'slowdown':>8}")
    for r in runs.values():
        per_rec = r.cpu_s / r.records * 1e6 if r.records and r.cpu_s else 0.0
        slowdown = (none.rate / r.rate - 1) * 100
        print(f"{r.name:9} {r.rate:10.0f} {r.hits:10d} {r.records:10d} {r.lost:10d} "
              f"{r.lost / max(r.hits, 1) * 100:6.2f} {'yes' if r.adds_up else 'NO':>7} {per_rec:10.2f} "
              f"{slowdown:7.1f}%")
    exp, cat = runs["exporter"], runs["cat"]
    exp_cpu = exp.cpu_s / max(exp.records, 1)
    cat_cpu = cat.cpu_s / max(cat.records, 1)
    print(f"exporter/cat: CPU per record {exp_cpu / cat_cpu:.2f}x, loss {exp.lost / max(exp.hits, 1) * 100:.2f}% vs "
          f"{cat.lost / max(cat.hits, 1) * 100:.2f}%, slowdown {(none.rate / exp.rate - 1) * 100:.1f}% vs "
          f"{(none.rate / cat.rate - 1) * 100:.1f}%, exporter events/s {exp.hits / exp.seconds:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--targets", default="step,push")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs the exporter")
    args = ap.parse_args()
    tracefs = Tracefs(find_tracefs("auto"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        binary = tmp / "loop"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "benchmarks" / "targets" / "loop.c")],
                       check=True)
        for mode in args.targets.split(","):
            runs = {
                "none": run_none(tracefs, binary, mode, args.seconds),
                "exporter": run_exporter(binary, mode, args.seconds, tmp, args.python),
                "cat": run_cat(tracefs, binary, mode, args.seconds, tmp),
            }
            report(mode, runs)


if __name__ == "__main__":
    main()
